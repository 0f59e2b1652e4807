//! List output as plain columns (comfy-table sizes each column to its widest cell, counting
//! characters as the terminal shows them).

use comfy_table::{CellAlignment, ContentArrangement, Table, presets};

/// A table with `header`; columns named in `right` are right-aligned (counts).
pub(super) fn table(header: &[&str], right: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, 2));
        if header.get(i).is_some_and(|name| right.contains(name)) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// The table's lines, without the padding after the last column.
pub(super) fn render(table: &Table) -> String {
    table
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_whatever_the_cell_widths() {
        let mut t = super::table(&["ID", "VOTES", "REASON"], &["VOTES"]);
        t.add_row(vec!["a", "0/2", "disk full"]);
        t.add_row(vec!["abcdef", "10/10", "ünïcödé reason"]);
        let text = super::render(&t);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "ID      VOTES  REASON",
                "a         0/2  disk full",
                "abcdef  10/10  ünïcödé reason",
            ]
        );
    }
}
