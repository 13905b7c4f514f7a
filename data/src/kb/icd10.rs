//! The ICD-10-CM tabular list (chapters, blocks, categories, codes) with titles and parents, read from the
//! shipped `icd10cm.tsv.gz` (`code <TAB> parent <TAB> title [<TAB> inclusion terms joined with " | "]`, built by
//! `scripts/build-kb.py`).
use super::text;
use spar_core::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

/// One node of the hierarchy.
#[derive(Clone, Debug)]
pub struct Icd10Node {
    /// As CMS writes it: "J18.9", "J18", "J09-J18" (block), "10" (chapter).
    pub code: String,
    /// Empty for chapters.
    pub parent: String,
    pub title: String,
    /// The tabular list's inclusion terms: other names the code is used for ("Lung cancer NOS" under C34.90).
    pub inclusions: Vec<String>,
}

impl Icd10Node {
    /// Chapters are numbered "1".."22".
    pub fn is_chapter(&self) -> bool {
        self.code.chars().all(|c| c.is_ascii_digit())
    }
    /// Blocks are ranges like "J09-J18".
    pub fn is_block(&self) -> bool {
        self.code.contains('-')
    }
}

/// The whole table, keyed by the code without its dot, upper case.
#[derive(Debug, Default)]
pub struct Icd10 {
    nodes: Vec<Icd10Node>,
    by_key: HashMap<String, usize>,
    /// Word -> nodes whose title has it; built on first use (only claim verification needs it).
    word_index: OnceLock<HashMap<String, Vec<u32>>>,
}

/// The lookup key of a code as people write it: upper case, dot and spaces removed.
pub fn key(code: &str) -> String {
    code.trim()
        .chars()
        .filter(|c| !matches!(c, '.' | ' '))
        .flat_map(char::to_uppercase)
        .collect()
}

impl Icd10 {
    /// Reads `icd10cm.tsv.gz`; returns the raw bytes too (they enter the version hash).
    pub fn load(path: &Path) -> Result<(Self, Vec<u8>)> {
        let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut text)
            .map_err(|e| {
                Error::invalid(
                    path.display(),
                    format!("not a gzip-compressed UTF-8 TSV: {e}"),
                )
            })?;
        let mut icd = Icd10::default();
        // A block of one category (B10, B20, C50 ...) comes out of the generator as two rows with the category's
        // code, each its own parent: keep one node, hung from the chapter being read (rows are in tabular
        // order), or the hierarchy would loop.
        let mut chapter = String::new();
        for (i, line) in text.lines().enumerate() {
            let mut parts = line.splitn(4, '\t');
            let (Some(code), Some(parent), Some(title)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(Error::Field {
                    file: path.display().to_string(),
                    line: i + 1,
                    field: "code/parent/title".into(),
                    msg: "expected 3 tab-separated columns".into(),
                });
            };
            let inclusions: Vec<String> = parts
                .next()
                .unwrap_or("")
                .split(" | ")
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect();
            let k = key(code);
            let mut parent = parent.to_string();
            if k == key(&parent) {
                if icd.by_key.contains_key(&k) {
                    continue;
                }
                parent = chapter.clone();
            }
            if code.chars().all(|c| c.is_ascii_digit()) {
                chapter = code.to_string();
            }
            icd.by_key.insert(k, icd.nodes.len());
            icd.nodes.push(Icd10Node {
                code: code.into(),
                parent,
                title: title.into(),
                inclusions,
            });
        }
        if icd.nodes.is_empty() {
            return Err(Error::invalid(path.display(), "no ICD-10-CM codes"));
        }
        Ok((icd, raw))
    }

    /// Number of nodes (chapters, blocks, categories, codes).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when no node was loaded.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node of `code` (any spelling: "j189", "J18.9"), chapters included.
    pub fn node(&self, code: &str) -> Option<&Icd10Node> {
        self.by_key.get(&key(code)).map(|&i| &self.nodes[i])
    }

    /// A diagnosis code (category or finer, or a block); chapter numbers are not codes.
    pub fn is_valid(&self, code: &str) -> bool {
        self.node(code).is_some_and(|n| !n.is_chapter())
    }

    /// The parent node (code -> category -> block -> chapter).
    pub fn parent(&self, code: &str) -> Option<&Icd10Node> {
        self.node(code).and_then(|n| {
            if n.parent.is_empty() {
                None
            } else {
                self.node(&n.parent)
            }
        })
    }

    /// Ancestors from the parent up to the chapter.
    pub fn ancestors(&self, code: &str) -> Vec<&Icd10Node> {
        let mut out = Vec::new();
        let mut cur = self.parent(code);
        while let Some(n) = cur {
            out.push(n);
            cur = self.parent(&n.code);
        }
        out
    }

    /// The chapter a code belongs to.
    pub fn chapter(&self, code: &str) -> Option<&Icd10Node> {
        let n = self.node(code)?;
        if n.is_chapter() {
            return Some(n);
        }
        self.ancestors(code).into_iter().find(|a| a.is_chapter())
    }

    /// The chapters (nodes "1".."22"), in order.
    pub fn chapters(&self) -> Vec<&Icd10Node> {
        self.nodes.iter().filter(|n| n.is_chapter()).collect()
    }

    /// The chapters whose code range takes in codes starting with `letter` ("D": neoplasms and blood).
    pub fn chapters_of_letter(&self, letter: char) -> Vec<&Icd10Node> {
        let l = letter.to_ascii_uppercase();
        self.chapters()
            .into_iter()
            .filter(|ch| {
                // The title ends with its range: "Neoplasms (C00-D49)".
                let range = ch
                    .title
                    .rsplit_once('(')
                    .map(|(_, r)| r.trim_end_matches(')'))
                    .unwrap_or("");
                let mut ends = range.split('-').filter_map(|e| e.chars().next());
                match (ends.next(), ends.next()) {
                    (Some(a), Some(b)) => (a..=b).contains(&l),
                    _ => false,
                }
            })
            .collect()
    }

    /// Nodes whose title contains every word of `words` (folded, simple plural stripping).
    pub fn titles_with_all(&self, words: &[String]) -> Vec<&Icd10Node> {
        let index = self.word_index.get_or_init(|| {
            let mut idx: HashMap<String, Vec<u32>> = HashMap::new();
            for (i, n) in self.nodes.iter().enumerate() {
                let mut seen = HashSet::new();
                for w in title_words(&n.title) {
                    if seen.insert(w.clone()) {
                        idx.entry(w).or_default().push(i as u32);
                    }
                }
            }
            idx
        });
        let mut lists: Vec<&Vec<u32>> = Vec::new();
        for w in words {
            match index.get(w) {
                Some(l) => lists.push(l),
                None => return Vec::new(),
            }
        }
        lists.sort_by_key(|l| l.len());
        let Some((first, rest)) = lists.split_first() else {
            return Vec::new();
        };
        let sets: Vec<HashSet<u32>> = rest.iter().map(|l| l.iter().copied().collect()).collect();
        first
            .iter()
            .filter(|i| sets.iter().all(|s| s.contains(i)))
            .map(|&i| &self.nodes[i as usize])
            .collect()
    }
}

/// Content words of a title or a claim's description, folded, plural "s" stripped.
pub fn title_words(s: &str) -> Vec<String> {
    const STOP: &[&str] = &[
        "the",
        "of",
        "and",
        "or",
        "in",
        "with",
        "a",
        "an",
        "to",
        "for",
        "is",
        "as",
        "by",
        "on",
        "code",
        "codes",
        "icd",
        "icd-10",
        "icd10",
        "icd-10-cm",
        "cm",
        "diagnosis",
        "diagnoses",
        "classified",
        "elsewhere",
        "which",
        "that",
        "this",
        "be",
        "are",
        "it",
        "used",
        "correct",
        "represents",
        "means",
        "denotes",
        "stands",
        "refers",
        "describes",
        "corresponds",
        "not",
        "no",
        "never",
        "isn't",
        "unspecified",
        "other",
        "specified",
        "nos",
        // The verbs and hedges of claims about codes ("K35 covers ...", "asthma is coded under J45", "would
        // usually be coded as"): never words of a title that matter.
        "cover",
        "covers",
        "coded",
        "coding",
        "under",
        "category",
        "categories",
        "falls",
        "fall",
        "belong",
        "belongs",
        "found",
        "would",
        "usually",
        "typically",
        "generally",
        "probably",
        "likely",
        "mean",
        "called",
        "known",
        "listed",
        "assigned",
        "should",
        "can",
        "may",
        "since",
        "given",
        "because",
        // Where the patient caught it is not coded in ICD-10-CM (community-acquired pneumonia is J18.9).
        "community-acquired",
        "hospital-acquired",
        "nosocomial",
    ];
    text::tokens(&text::fold(s))
        .into_iter()
        // "encephalomyelitis/chronic fatigue syndrome": a slash in a title joins two names.
        .flat_map(|w| w.split('/'))
        .filter(|w| !w.is_empty())
        // Numbers of one or two digits are part of names ("type 2 diabetes" is not "type 1"); longer ones
        // and decimals are codes or values.
        .filter(|w| {
            !STOP.contains(w)
                && !(w.chars().all(|c| c.is_ascii_digit() || c == '.')
                    && (w.len() > 2 || w.contains('.')))
        })
        .map(|w| {
            let w = w.trim_end_matches("'s");
            if w.len() > 4
                && w.ends_with('s')
                && !w.ends_with("ss")
                && !w.ends_with("is")
                && !w.ends_with("us")
            {
                w[..w.len() - 1].to_string()
            } else {
                w.to_string()
            }
        })
        .collect()
}
