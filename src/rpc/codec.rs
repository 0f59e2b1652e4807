//! The protobuf codec of every latchkey service: prost's, except that a message that cannot
//! be decoded (a non-UTF-8 string field, a truncated varint, a wrong wire type) is the caller's
//! mistake — `INVALID_ARGUMENT` with the stable code `rpc.malformed_message` — not `INTERNAL`.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::base::error::ErrorKind;

/// Stable code of an undecodable message.
pub const MALFORMED_MESSAGE: &str = "rpc.malformed_message";

/// prost encoding; decoding errors are the sender's fault (see the module doc).
#[derive(Debug, Clone)]
pub struct LatchkeyCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for LatchkeyCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for LatchkeyCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder {
            inner: ProstDecoder::new(BufferSettings::default()),
        }
    }
}

/// Decodes `U`; a message that is not a valid `U` is `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct StrictDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        U::decode(buf).map(Some).map_err(|e| {
            super::status(
                ErrorKind::InvalidInput,
                MALFORMED_MESSAGE,
                &format!(
                    "the message cannot be decoded as {}: {e}",
                    std::any::type_name::<U>()
                ),
            )
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
