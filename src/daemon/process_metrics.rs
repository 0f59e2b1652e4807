//! The daemon's own process for Prometheus: build info and the standard `process_*` metrics
//! (the names every Prometheus client library uses), read from `/proc/self` at each scrape.

use std::fmt::Write as _;

use crate::base::constants::STORE_SCHEMA_VERSION;

/// What `/proc/self/stat` and friends say, in the units Prometheus wants.
#[derive(Debug, Default, PartialEq)]
struct Process {
    cpu_seconds: f64,
    start_time_seconds: f64,
    virtual_bytes: u64,
    resident_bytes: u64,
    open_fds: u64,
    max_fds: Option<u64>,
}

/// Reads the fields of `/proc/self/stat` after the command name (which may hold spaces and
/// parentheses): index 0 is field 3 (state).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, after) = stat.rsplit_once(')')?;
    Some(after.split_whitespace().collect())
}

fn parse(stat: &str, boot_time: u64, ticks_per_second: u64, page_size: u64) -> Option<Process> {
    let f = stat_fields(stat)?;
    let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    let ticks = ticks_per_second.max(1) as f64;
    Some(Process {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        start_time_seconds: boot_time as f64 + field(22)? as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)?.saturating_mul(page_size),
        ..Process::default()
    })
}

fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn read() -> Option<Process> {
    use nix::unistd::{SysconfVar, sysconf};
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten()?;
    let page = sysconf(SysconfVar::PAGE_SIZE).ok().flatten()?;
    let mut process = parse(
        &stat,
        boot_time()?,
        u64::try_from(ticks).ok()?,
        u64::try_from(page).ok()?,
    )?;
    process.open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    process.max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft);
    Some(process)
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// The build and process metrics, in the text format; the process part is left out where
/// `/proc` cannot be read.
pub(crate) fn render() -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP latchkey_build_info The running latchkeyd: version and store schema.\n\
         # TYPE latchkey_build_info gauge\n\
         latchkey_build_info{{version=\"{}\",store_schema=\"{STORE_SCHEMA_VERSION}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let Some(p) = read() else {
        return out;
    };
    metric(
        &mut out,
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds.",
        p.cpu_seconds,
    );
    metric(
        &mut out,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        p.start_time_seconds,
    );
    metric(
        &mut out,
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size, in bytes.",
        p.virtual_bytes,
    );
    metric(
        &mut out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size, in bytes.",
        p.resident_bytes,
    );
    metric(
        &mut out,
        "process_open_fds",
        "gauge",
        "Open file descriptors.",
        p.open_fds,
    );
    if let Some(max) = p.max_fds {
        metric(
            &mut out,
            "process_max_fds",
            "gauge",
            "The limit on open file descriptors.",
            max,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stat_line_with_spaces_and_parentheses_in_the_name_is_read_by_field() {
        // Fields 3.. of a real /proc/self/stat, behind a hostile command name.
        let stat = "4242 (latch (key) d) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 150 0 0 20 0 9 0 1000 104857600 2560 18446744073709551615";
        let p = super::parse(stat, 1_700_000_000, 100, 4096).unwrap();
        assert_eq!(p.cpu_seconds, 4.0);
        assert_eq!(p.start_time_seconds, 1_700_000_010.0);
        assert_eq!(p.virtual_bytes, 104_857_600);
        assert_eq!(p.resident_bytes, 2560 * 4096);
    }

    #[test]
    fn this_process_is_described() {
        let text = super::render();
        assert!(text.contains("latchkey_build_info{version=\""), "{text}");
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap();
        assert!(rss.parse::<u64>().unwrap() > 0, "{text}");
    }
}
