//! Splitting a YAML stream into documents on `---` lines, remembering where
//! each document starts so errors can point at the file's real lines.

/// One document's text and the 1-based file line its first line is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DocText<'a> {
    pub start_line: usize,
    pub text: &'a str,
}

/// Whether `line` separates documents: `---`, optionally followed by
/// spaces and a `# comment`.
fn is_separator(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("---") else {
        return false;
    };
    let rest = rest.trim_end_matches(['\r', '\n']);
    rest.is_empty()
        || (rest.starts_with([' ', '\t']) && {
            let t = rest.trim_start();
            t.is_empty() || t.starts_with('#')
        })
}

/// Whether a document holds nothing but blank lines, comments and `...`.
pub(crate) fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "..."
    })
}

/// The documents of `text`, blank ones left out.
pub(crate) fn split_documents(text: &str) -> Vec<DocText<'_>> {
    let mut docs = Vec::new();
    let mut start_byte = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if is_separator(line) {
            docs.push(DocText {
                start_line,
                text: &text[start_byte..offset],
            });
            start_byte = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push(DocText {
        start_line,
        text: &text[start_byte..],
    });
    docs.retain(|d| !is_blank(d.text));
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_tracks_lines() {
        let text = "a: 1\n---\nb: 2\n--- # two\n\n# only a comment\n---  \nc: 3\nd: 4\n";
        let docs = split_documents(text);
        assert_eq!(
            docs,
            vec![
                DocText {
                    start_line: 1,
                    text: "a: 1\n"
                },
                DocText {
                    start_line: 3,
                    text: "b: 2\n"
                },
                DocText {
                    start_line: 8,
                    text: "c: 3\nd: 4\n"
                },
            ]
        );
    }

    #[test]
    fn leading_separator_and_crlf() {
        let docs = split_documents("---\r\na: 1\r\n---\r\nb: 2");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].start_line, 2);
        assert_eq!(docs[1].start_line, 4);
        assert_eq!(docs[1].text, "b: 2");
    }

    #[test]
    fn not_separators() {
        for l in ["----", "---x", "--- a: 1", " ---", "--"] {
            assert!(!is_separator(l), "{l}");
        }
        for l in ["---", "---\n", "--- ", "--- # c", "---\t#c\r\n"] {
            assert!(is_separator(l), "{l}");
        }
        assert!(split_documents("").is_empty());
        assert!(split_documents("---\n---\n# c\n").is_empty());
    }
}
