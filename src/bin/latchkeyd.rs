//! `latchkeyd`: the latchkey daemon. The command line is `latchkey::daemon::cli`.

/// sled allocates and frees page-cache nodes on every read and write: with glibc's malloc that
/// was over a quarter of the daemon's CPU at a 1M-grant restart (BENCHMARKS.md, figure 5).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    latchkey::daemon::cli::main()
}
