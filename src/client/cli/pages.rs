//! What both binaries print about their own clap trees: shell completions and man pages
//! (`latchkeyd` uses these too).

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// A section of our own after clap's on the top man page, as roff (e.g. FILES, SEE ALSO).
pub struct ExtraSection {
    /// The heading, in capitals.
    pub title: &'static str,
    /// The body, in roff.
    pub roff: &'static str,
}

/// Prints `bin`'s completion script for `shell` on stdout.
pub fn print_completions(mut cmd: clap::Command, bin: &str, shell: clap_complete::Shell) {
    // Into memory first: clap_complete panics on a failed write (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, bin, &mut script);
    let _closed_pipe = std::io::stdout().write_all(&script);
}

/// How the man pages are labelled.
pub struct ManPages<'a> {
    /// Manual section: 1 for the CLI, 8 for the daemon.
    pub section: &'a str,
    /// The date on every page (the release's, so a rebuild gives the same pages).
    pub date: &'a str,
    /// Sections after clap's on the top page.
    pub extra: &'a [ExtraSection],
}

impl ManPages<'_> {
    /// Writes one page per visible command into `dir`: `BIN.N` and `BIN-SUB[-SUB].N`.
    /// Returns the files written.
    pub fn write(&self, cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut cmd = cmd.disable_help_subcommand(true);
        // Builds display names (`latchkey-request`) and propagates global arguments.
        cmd.build();
        let mut written = Vec::new();
        self.write_tree(&cmd, dir, true, &mut written)?;
        Ok(written)
    }

    fn write_tree(
        &self,
        cmd: &clap::Command,
        dir: &Path,
        top: bool,
        written: &mut Vec<PathBuf>,
    ) -> std::io::Result<()> {
        let man = clap_mangen::Man::new(cmd.clone())
            .section(self.section)
            .date(self.date)
            .source(format!("latchkey {}", env!("CARGO_PKG_VERSION")))
            .manual("latchkey");
        let path = dir.join(man.get_filename());
        let mut page = Vec::new();
        man.render(&mut page)?;
        if top {
            for extra in self.extra {
                let _ = writeln!(page, ".SH {}\n{}", extra.title, extra.roff.trim_end());
            }
        }
        std::fs::write(&path, page)?;
        written.push(path);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            self.write_tree(sub, dir, false, written)?;
        }
        Ok(())
    }
}
