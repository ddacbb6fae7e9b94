//! Fuzz entry points (feature `test-utils`), also replayed by the corpus tests.

use std::path::Path;

use crate::unpack::{unpack, UnpackOptions, Whiteouts};

/// What a fuzz input did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LayerOutcome {
    /// The layer unpacked without an error (whiteouts applied, then as overlay).
    pub unpacked: bool,
    /// Entries unpacked in the last attempt.
    pub entries: u64,
}

/// Unpacks `data` as a layer into a fresh directory beside an empty sibling, in both
/// whiteout modes, then checks that nothing appeared outside the layer directory:
/// panics if it did (a finding). Errors are fine.
pub fn layer_unpack(data: &[u8]) -> LayerOutcome {
    let Ok(scratch) = tempfile::tempdir() else {
        return LayerOutcome::default();
    };
    let mut out = LayerOutcome::default();
    for (i, whiteouts) in [Whiteouts::Apply, Whiteouts::Overlay]
        .into_iter()
        .enumerate()
    {
        let layer = scratch.path().join(format!("layer{i}"));
        let outside = scratch.path().join(format!("outside{i}"));
        if std::fs::create_dir(&layer).is_err() || std::fs::create_dir(&outside).is_err() {
            return out;
        }
        let opts = UnpackOptions {
            whiteouts,
            max_bytes: 16 << 20,
            same_owner: false,
        };
        match unpack(data, &layer, &opts) {
            Ok(s) => {
                out.unpacked = true;
                out.entries = s.entries;
            }
            Err(_) => out.unpacked = false,
        }
        assert_empty(&outside);
    }
    let names: Vec<String> = std::fs::read_dir(scratch.path())
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        names
            .iter()
            .all(|n| ["layer0", "layer1", "outside0", "outside1"].contains(&n.as_str())),
        "a layer wrote beside its directory: {names:?}"
    );
    out
}

fn assert_empty(dir: &Path) {
    let n = std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0);
    assert_eq!(n, 0, "a layer wrote into {}", dir.display());
}

/// Parses `data` (as UTF-8, invalid bytes replaced) as a Dockerfile and substitutes
/// variables in every instruction's text: errors are fine; a panic, or a step whose
/// line number is outside the file, is a finding. Returns the number of steps parsed.
pub fn dockerfile_parse(data: &[u8]) -> usize {
    use crate::build::dockerfile::{parse, substitute};
    let text = String::from_utf8_lossy(data);
    let lines = text.lines().count().max(1);
    let vars = |n: &str| (n.len() % 2 == 0).then(|| n.to_string());
    let _ = substitute(&text, &vars);
    match parse(&text) {
        Ok(steps) => {
            for s in &steps {
                assert!(
                    (1..=lines).contains(&s.line),
                    "step at line {} of {lines}",
                    s.line
                );
                let _ = substitute(&s.text, &vars);
            }
            steps.len()
        }
        Err(crate::ImageError::Dockerfile { line, .. }) => {
            assert!(
                line >= 1 && line <= lines,
                "error at line {line} of {lines}"
            );
            0
        }
        Err(_) => 0,
    }
}
