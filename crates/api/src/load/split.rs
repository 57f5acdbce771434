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

/// How many blank, comment or directive lines open `text`.
pub(crate) fn leading_blank_lines(text: &str) -> usize {
    text.lines()
        .take_while(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#') || t.starts_with('%')
        })
        .count()
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

/// The items of a block-style `items:` list (as `kubectl get -o yaml`
/// writes it), each as standalone YAML text with the same lines and
/// columns: the item's `-` becomes a space. Returns `(line offset within the
/// document, text)` per item, or `None` when the layout is not recognised.
/// Callers check each text parses to the same value as the item.
pub(crate) fn list_item_texts(doc: &str) -> Option<Vec<(usize, String)>> {
    let lines: Vec<&str> = doc.split_inclusive('\n').collect();
    let is_skippable = |l: &str| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    };
    let items_at = lines.iter().position(|l| {
        l.strip_prefix("items:").is_some_and(|rest| {
            let t = rest.trim();
            t.is_empty() || t.starts_with('#')
        })
    })?;
    let first = (items_at + 1..lines.len()).find(|&i| !is_skippable(lines[i]))?;
    let indent = lines[first].len() - lines[first].trim_start_matches(' ').len();
    let starts_item = |l: &str| {
        l.len() > indent
            && l[..indent].bytes().all(|b| b == b' ')
            && l[indent..].starts_with('-')
            && l[indent + 1..].starts_with([' ', '\n', '\r'])
    };
    if !starts_item(lines[first]) {
        return None;
    }
    let mut items: Vec<(usize, String)> = Vec::new();
    for (i, line) in lines.iter().enumerate().skip(first) {
        if starts_item(line) {
            let mut text = String::with_capacity(line.len());
            text.push_str(&line[..indent]);
            text.push(' ');
            text.push_str(&line[indent + 1..]);
            items.push((i, text));
            continue;
        }
        let leading = line.len() - line.trim_start_matches(' ').len();
        if is_skippable(line) || leading > indent {
            if let Some((_, text)) = items.last_mut() {
                text.push_str(line);
            }
        } else {
            break; // The next key after the list.
        }
    }
    Some(items)
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
    fn list_items_keep_their_lines() {
        let doc = "apiVersion: v1\nitems:\n- a: 1\n  b: [x,\n    y]\n# c\n-\n  a: 2\nkind: List\n";
        let items = list_item_texts(doc).expect("items");
        assert_eq!(
            items,
            vec![
                (2, "  a: 1\n  b: [x,\n    y]\n# c\n".to_string()),
                (6, " \n  a: 2\n".to_string())
            ]
        );
        let nested = "kind: List\nitems:\n  - a: 1\n  - b: 2\n";
        assert_eq!(list_item_texts(nested).map(|i| i.len()), Some(2));
        assert_eq!(list_item_texts("items: [a, b]\n"), None);
        assert_eq!(list_item_texts("items:\n  a: 1\n"), None);
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
