//! The README says what the code does: its reconnect table is the gateway's close
//! code table, and its layout table names every room of `src/` that exists.

use std::path::Path;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md")
}

#[test]
fn the_reconnect_table_is_the_code_table() {
    let r = readme();
    let begin = r
        .find("<!-- reconnect-table:begin -->\n")
        .expect("begin marker")
        + 31;
    let end = r.find("<!-- reconnect-table:end -->").expect("end marker");
    assert_eq!(
        &r[begin..end],
        xcord_common::codes::reconnect_table_markdown(),
        "README's reconnect table differs from xcord_common::codes::TABLE"
    );
}

#[test]
fn the_layout_table_matches_the_tree() {
    let r = readme();
    let layout = &r[r.find("## Layout").expect("a Layout section")..];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Every path the table names exists …
    for cell in layout.lines().filter_map(|l| l.strip_prefix("| `")) {
        let path = cell.split('`').next().unwrap_or("");
        assert!(
            root.join(path).exists(),
            "README layout names {path}, which is not there"
        );
    }
    // … and every file or folder directly under src/ is named.
    for e in std::fs::read_dir(root.join("src")).expect("src/") {
        let name = e.expect("entry").file_name().into_string().expect("utf-8");
        let shown = if name.ends_with(".rs") {
            format!("src/{name}")
        } else {
            format!("src/{name}/")
        };
        assert!(
            layout.contains(&format!("`{shown}`")),
            "README layout lacks `{shown}`"
        );
    }
}
