//! PHI redaction (HIPAA Safe Harbor identifiers). Owned by the data work; see `docs/privacy.md`.
//! Applied before any text leaves the process for a non-loopback endpoint and before anything is logged.
//!
//! [`Redactor::redact`] finds identifiers with patterns (no model): names in context (titles, "my name is",
//! "Patient: X Y", relatives, common first names followed by a surname), dates in many formats and locales,
//! phone and fax numbers, e-mail, URLs, IPs, street addresses and postal codes, SSNs, medical record /
//! account / licence / other ID numbers, and ages over 89. Each becomes a typed placeholder (`[DATE]`,
//! `[PHONE]` ...). Clinical content is left alone on purpose: doses ("500 mg twice daily"), lab values
//! ("K 5.2 mmol/L", "BP 140/90"), ICD-10 codes, durations and ages up to 89 do not match any pattern, and the
//! labelled set in `data/tests/phi_labelled.jsonl` measures both sides.
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;

/// The kind of identifier a span holds; its placeholder is `[KIND]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PhiKind {
    Name,
    Date,
    Phone,
    Fax,
    Email,
    Url,
    Ip,
    Address,
    Zip,
    Ssn,
    Mrn,
    Account,
    License,
    Id,
    Age,
}

impl PhiKind {
    /// Every kind, in declaration order.
    pub const ALL: [PhiKind; 15] = [
        PhiKind::Name,
        PhiKind::Date,
        PhiKind::Phone,
        PhiKind::Fax,
        PhiKind::Email,
        PhiKind::Url,
        PhiKind::Ip,
        PhiKind::Address,
        PhiKind::Zip,
        PhiKind::Ssn,
        PhiKind::Mrn,
        PhiKind::Account,
        PhiKind::License,
        PhiKind::Id,
        PhiKind::Age,
    ];

    /// The placeholder written in place of the identifier.
    pub fn placeholder(self) -> &'static str {
        match self {
            PhiKind::Name => "[NAME]",
            PhiKind::Date => "[DATE]",
            PhiKind::Phone => "[PHONE]",
            PhiKind::Fax => "[FAX]",
            PhiKind::Email => "[EMAIL]",
            PhiKind::Url => "[URL]",
            PhiKind::Ip => "[IP]",
            PhiKind::Address => "[ADDRESS]",
            PhiKind::Zip => "[ZIP]",
            PhiKind::Ssn => "[SSN]",
            PhiKind::Mrn => "[MRN]",
            PhiKind::Account => "[ACCOUNT]",
            PhiKind::License => "[LICENSE]",
            PhiKind::Id => "[ID]",
            PhiKind::Age => "[AGE]",
        }
    }

    /// Parses `NAME`, `date`, `[PHONE]` ...
    pub fn parse(s: &str) -> Option<PhiKind> {
        let s = s.trim().trim_start_matches('[').trim_end_matches(']');
        PhiKind::ALL.into_iter().find(|k| {
            k.placeholder()
                .trim_matches(|c| c == '[' || c == ']')
                .eq_ignore_ascii_case(s)
        })
    }

    /// When two detections overlap, the more specific kind wins (an e-mail inside a URL stays an e-mail ...).
    fn priority(self) -> u8 {
        match self {
            PhiKind::Email => 0,
            PhiKind::Url => 1,
            PhiKind::Ip => 2,
            PhiKind::Ssn => 3,
            PhiKind::Mrn | PhiKind::Account | PhiKind::License | PhiKind::Id => 4,
            PhiKind::Fax | PhiKind::Phone => 5,
            PhiKind::Date => 6,
            PhiKind::Address => 7,
            PhiKind::Zip => 8,
            PhiKind::Age => 9,
            PhiKind::Name => 10,
        }
    }
}

/// One identifier found: byte range in the original text and its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhiSpan {
    pub start: usize,
    pub end: usize,
    pub kind: PhiKind,
}

/// Redacted text and the spans (in the original text) that were replaced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Redacted {
    pub text: String,
    pub spans: Vec<PhiSpan>,
}

/// What to redact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedactorOptions {
    /// Kinds to redact (default: all).
    pub kinds: Vec<PhiKind>,
    /// Names known to belong to the patient or relatives (from a case profile): always redacted as `[NAME]`,
    /// case-insensitively, wherever they appear.
    pub known_names: Vec<String>,
    /// Ages above this are identifying (Safe Harbor: 89).
    pub max_age: u32,
}

impl Default for RedactorOptions {
    fn default() -> Self {
        RedactorOptions {
            kinds: PhiKind::ALL.to_vec(),
            known_names: Vec::new(),
            max_age: 89,
        }
    }
}

/// A configured redactor. Building one compiles nothing: the patterns are shared statics.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    opts: RedactorOptions,
    known: Option<Regex>,
}

/// Redacts with the default options (all kinds).
pub fn redact(text: &str) -> String {
    static DEFAULT: LazyLock<Redactor> = LazyLock::new(Redactor::default);
    DEFAULT.redact(text).text
}

impl Redactor {
    /// A redactor with these options (known names are compiled here, once).
    pub fn new(opts: RedactorOptions) -> Self {
        let names: Vec<String> = opts
            .known_names
            .iter()
            .map(|n| n.trim())
            .filter(|n| n.chars().count() >= 2)
            .map(regex::escape)
            .collect();
        let known = (!names.is_empty()).then(|| {
            Regex::new(&format!(r"(?i)\b(?:{})\b", names.join("|")))
                .expect("escaped names form a valid regex")
        });
        Redactor { opts, known }
    }

    /// The options this redactor was built with.
    pub fn options(&self) -> &RedactorOptions {
        &self.opts
    }

    /// The identifiers in `text`, sorted, non-overlapping.
    pub fn find(&self, text: &str) -> Vec<PhiSpan> {
        let mut found = Vec::new();
        detect(text, self.opts.max_age, &mut found);
        if let Some(re) = &self.known {
            for m in re.find_iter(text) {
                found.push(PhiSpan {
                    start: m.start(),
                    end: m.end(),
                    kind: PhiKind::Name,
                });
            }
        }
        found.retain(|s| self.opts.kinds.contains(&s.kind) && s.start < s.end);
        resolve_overlaps(found)
    }

    /// `text` with every identifier replaced by its placeholder.
    pub fn redact(&self, text: &str) -> Redacted {
        let spans = self.find(text);
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for s in &spans {
            out.push_str(&text[at..s.start]);
            out.push_str(s.kind.placeholder());
            at = s.end;
        }
        out.push_str(&text[at..]);
        Redacted { text: out, spans }
    }
}

/// Keeps, among overlapping spans, the one with the best priority (then the longest, then the earliest).
fn resolve_overlaps(mut spans: Vec<PhiSpan>) -> Vec<PhiSpan> {
    spans.sort_by_key(|s| {
        (
            s.kind.priority(),
            std::cmp::Reverse(s.end - s.start),
            s.start,
        )
    });
    let mut kept: Vec<PhiSpan> = Vec::new();
    for s in spans {
        if kept.iter().all(|k| s.end <= k.start || s.start >= k.end) {
            kept.push(s);
        }
    }
    kept.sort_by_key(|s| s.start);
    kept
}

fn re(p: &str) -> Regex {
    Regex::new(p).unwrap_or_else(|e| panic!("PHI pattern {p:?} is invalid: {e}"))
}

const MONTHS_EN: &str = r"jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?";
const MONTHS_OTHER: &str = r"janvier|f[ée]vrier|mars|avril|mai|juin|juillet|ao[ûu]t|septembre|octobre|novembre|d[ée]cembre|januar|februar|m[äa]rz|juni|juli|oktober|dezember|enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|setiembre|octubre|noviembre|diciembre|gennaio|febbraio|aprile|maggio|giugno|luglio|settembre|ottobre|dicembre";

/// What may follow a URL's scheme or host in running text. A URL stops at white space, quotes, a backslash (a JSON
/// escape such as `\"` or `\n`), angle brackets, braces, square brackets, `|`, `^` and backticks, so a URL inside a
/// JSON string, a markdown link or a table cell never swallows the delimiters around it. Parentheses are kept only
/// when balanced ("wiki/Foo_(bar)"), so "(see https://x.org/a)" keeps its closing parenthesis. The last character
/// is not sentence punctuation (`.,;:!?`): "visit www.x.com/a." ends before the full stop.
static URL_TAIL: LazyLock<String> = LazyLock::new(|| {
    const CHAR: &str = r#"[^\s<>"'\\`(){}\[\]|^]"#;
    const LAST: &str = r#"[^\s<>"'\\`(){}\[\]|^.,;:!?]"#;
    let group = format!(r"\({CHAR}*\)");
    format!(r"(?:(?:{CHAR}|{group})*(?:{LAST}|{group}))?")
});

struct Pattern {
    re: Regex,
    kind: PhiKind,
    /// Capture group holding the identifier (0: the whole match).
    group: usize,
}

static PATTERNS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    let months = format!("(?:{MONTHS_EN}|{MONTHS_OTHER})");
    let p = |pat: &str, kind: PhiKind, group: usize| Pattern {
        re: re(pat),
        kind,
        group,
    };
    vec![
        p(
            r"(?i)\b[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b",
            PhiKind::Email,
            0,
        ),
        p(
            &format!(r"(?i)\b(?:https?://|ftp://|www\.){}", *URL_TAIL),
            PhiKind::Url,
            0,
        ),
        p(
            &format!(
                r"(?i)\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|org|net|edu|gov|io|co\.uk|de|fr|cn)/{}",
                *URL_TAIL
            ),
            PhiKind::Url,
            0,
        ),
        p(
            r"\b(?:25[0-5]|2[0-4]\d|1?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|1?\d?\d)){3}\b",
            PhiKind::Ip,
            0,
        ),
        p(
            r"(?i)\b(?:[0-9a-f]{1,4}:){2,7}(?::|[0-9a-f]{1,4})(?::[0-9a-f]{1,4})*\b|\b(?:[0-9a-f]{1,4}:){1,6}:[0-9a-f]{1,4}\b",
            PhiKind::Ip,
            0,
        ),
        p(r"\b\d{3}-\d{2}-\d{4}\b", PhiKind::Ssn, 0),
        p(
            r"(?i)\b(?:ssn|social security(?: number| no\.?| #)?)\s*(?:is|:|#)?\s*(\d{3}[ -]?\d{2}[ -]?\d{4})\b",
            PhiKind::Ssn,
            1,
        ),
        // Labelled identifiers: the label stays (it carries no identity), the value goes.
        p(
            r"(?i)\b(?:mrn|medical record(?: number| no\.?| #)?|record (?:number|no\.?|#)|chart (?:number|no\.?|#)|hospital (?:number|no\.?|#)|patient (?:id|number|no\.?|#)|unit number|nhs (?:number|no\.?))\s*(?:is|was)?\s*[:#]?\s*(\d{3}[ -]\d{3}[ -]\d{4}|[a-z]{0,4}[-#]?\d[\d-]{2,}[a-z]?)\b",
            PhiKind::Mrn,
            1,
        ),
        p(r"(?i)\bmrn[-:#]?(\d{4,})\b", PhiKind::Mrn, 1),
        p(
            r"(?i)\b(?:account|acct\.?|member id|member number|policy(?: number| no\.?| #)?|insurance (?:id|number|no\.?)|health plan (?:id|number)|beneficiary (?:id|number)|medicare(?: id| number| no\.?)?|medicaid(?: id| number)?|subscriber id|group number)\s*(?:number|no\.?|#|is|was)?\s*[:#]?\s*([a-z]{0,4}[-#]?\d[a-z\d-]{3,})",
            PhiKind::Account,
            1,
        ),
        p(
            r"(?i)\b(?:licen[cs]e|driver'?s licen[cs]e|dea|npi|certificate|registration)\s*(?:number|no\.?|#|is)?\s*[:#]?\s*([a-z]{0,3}[-#]?\d[a-z\d-]{4,})",
            PhiKind::License,
            1,
        ),
        p(
            r"(?i)\b(?:passport|serial|device id|device serial|vin|vehicle id|plate|licen[cs]e plate|employee id|badge|id|identifier|case id|study id)\s*(?:number|no\.?|#|is)?\s*[:#]?\s*([a-z]{0,4}[-#]?\d[a-z\d-]{3,})",
            PhiKind::Id,
            1,
        ),
        // Dates.
        p(
            r"\b(?:19|20)\d{2}[-/.](?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])(?:[T ]\d{1,2}:\d{2}(?::\d{2})?)?\b",
            PhiKind::Date,
            0,
        ),
        p(
            r"\b(?:0?[1-9]|[12]\d|3[01])[/.-](?:0?[1-9]|[12]\d|3[01])[/.-](?:19|20)?\d{2}\b",
            PhiKind::Date,
            0,
        ),
        p(
            &format!(
                r"(?i)\b(?:0?[1-9]|[12]\d|3[01])(?:st|nd|rd|th|er|\.)?\s*(?:of\s+|de\s+)?({months})\b\.?(?:,?\s*(?:de\s+)?(?:19|20)\d{{2}})?"
            ),
            PhiKind::Date,
            0,
        ),
        p(
            &format!(
                r"(?i)\b({months})\.?\s+(?:0?[1-9]|[12]\d|3[01])(?:st|nd|rd|th)?\b(?:,?\s*(?:19|20)\d{{2}})?"
            ),
            PhiKind::Date,
            0,
        ),
        p(
            &format!(r"(?i)\b({months})\.?,?\s+(?:19|20)\d{{2}}\b"),
            PhiKind::Date,
            0,
        ),
        p(
            r"\d{4}\s*年\s*\d{1,2}\s*月(?:\s*\d{1,2}\s*[日号])?|\d{1,2}\s*月\s*\d{1,2}\s*[日号]|\d{4}\s*년\s*\d{1,2}\s*월(?:\s*\d{1,2}\s*일)?",
            PhiKind::Date,
            0,
        ),
        p(
            r"(?i)\b(?:dob|d\.o\.b\.?|date of birth|born(?: on)?|birthday)\s*[:\-]?\s*((?:0?[1-9]|[12]\d|3[01])[/.-](?:0?[1-9]|1[0-2])[/.-]\d{2,4})",
            PhiKind::Date,
            1,
        ),
        // Phones and faxes: international prefix, or a national layout, or a labelled number.
        p(
            r"(?i)\b(fax|facsimile)\s*(?:number|no\.?|#)?\s*[:\-]?\s*(\+?[\d(][\d ().-]{6,}\d)",
            PhiKind::Fax,
            2,
        ),
        p(
            r"(?i)\b(?:tel|telephone|phone|ph|mobile|mob|cell|call(?: me)?(?: at| on)?|contact|reach me at|pager|whatsapp|landline|number is|电话|手机|tél|téléphone|telefon|teléfono)\s*(?:number|no\.?|#)?\s*[:\-]?\s*(\+?[\d(][\d ().-]{5,}\d)",
            PhiKind::Phone,
            1,
        ),
        p(
            r"\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){2,4}\b",
            PhiKind::Phone,
            0,
        ),
        p(
            r"(?:\(\d{3}\)\s?|\b\d{3}[.-])\d{3}[.-]\d{4}\b",
            PhiKind::Phone,
            0,
        ),
        p(r"\b0\d(?:[ .]\d{2}){4}\b", PhiKind::Phone, 0),
        p(r"\b0\d{2,4}[ ]\d{3,4}[ ]?\d{3,4}\b", PhiKind::Phone, 0),
        // Chinese mobile numbers; ASCII word boundaries so "电话13900001111" still splits.
        p(r"(?-u:\b)1[3-9]\d{9}(?-u:\b)", PhiKind::Phone, 0),
        // Addresses and postal codes.
        p(
            r"\b\d{1,6}[A-Za-z]?\s+(?:[NSEW]\.?\s+)?(?:[A-Z][a-zA-Z'-]+\.?\s+){1,4}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Way|Terrace|Circle|Cir|Highway|Hwy|Parkway|Pkwy|Square|Sq|Close|Crescent|Grove|Gardens|Row|Walk|Trail|Plaza)\b\.?(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|Flat|#)\.?\s*[A-Za-z0-9-]+)?",
            PhiKind::Address,
            0,
        ),
        p(
            r"(?i)\b\d{1,4}(?:\s?(?:bis|ter))?,?\s+(?:rue|avenue|av\.|boulevard|bd|chemin|all[ée]e|impasse|place|quai|calle|avenida|via|viale|piazza)\s+(?:(?:de|du|des|la|le|del|della|di|l')\s*)*[A-ZÀ-Ý][\w'’-]+(?:\s+[A-ZÀ-Ý][\w'’-]+){0,3}",
            PhiKind::Address,
            0,
        ),
        p(
            r"\b[A-ZÄÖÜ][a-zäöüß]+(?:straße|strasse|str\.|weg|gasse|platz|allee|ring|damm)\s+\d{1,4}[a-z]?\b",
            PhiKind::Address,
            0,
        ),
        p(r"\b(?:PO|P\.O\.)\s*Box\s+\d+\b", PhiKind::Address, 0),
        p(
            r"\b([A-Z][a-z]+(?:\s[A-Z][a-z]+)?),\s*(?:AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|DC)\s+\d{5}(?:-\d{4})?\b",
            PhiKind::Address,
            0,
        ),
        p(
            r"(?i)\b(?:zip code|zip|postal code|postcode|post code|plz|code postal)\s*[:#]?\s*([a-z\d]{3,5}(?:[ -][a-z\d]{3,4})?)\b",
            PhiKind::Zip,
            1,
        ),
        p(r"\b[A-Z]{1,2}\d[A-Z\d]?\s\d[A-Z]{2}\b", PhiKind::Zip, 0),
        p(
            r"\b[ABCEGHJ-NPRSTVXY]\d[ABCEGHJ-NPRSTV-Z]\s\d[ABCEGHJ-NPRSTV-Z]\d\b",
            PhiKind::Zip,
            0,
        ),
    ]
});

/// Ages: "93-year-old", "aged 95", "age: 101", "92 yo", "92 ans", "92岁".
static AGE: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i)\b(\d{2,3})(?:\s*-\s*|\s+)?(?:years?[\s-]*old|year-old|yrs?[\s-]*old|y/o|y\.o\.|yo|yr|yrs|years?|ans|jahre|años)\b|\b(?:aged?|age:|âgée?|alter)\s*[:=]?\s*(\d{2,3})\b|(\d{2,3})\s*(?:岁|歳|세)",
    )
});

const TITLES: &str = r"Dr|Doctor|Mr|Mrs|Ms|Miss|Mx|Prof|Professor|Sr|Sra|Srta|Herr|Frau|Mme|Mlle|Madame|Monsieur|Nurse|Sister";
const CAP_WORD: &str = r"(?:O['’]|Mc|Mac)?[A-Z][a-zà-ÿ]+(?:[-'’][A-Z]?[a-zà-ÿ]+)*";

static NAME_PATTERNS: LazyLock<Vec<(Regex, usize)>> = LazyLock::new(|| {
    let name = format!(r"{CAP_WORD}(?:\s+(?:[A-Z]\.\s+)?{CAP_WORD}){{0,2}}");
    vec![
        // Titles: "Dr. Jane Smith", "Mrs O'Neil".
        (re(&format!(r"\b(?:{TITLES})\.?\s+({name})")), 1),
        // Self-introductions.
        (
            re(&format!(
                r"(?i:\bmy name is|\bmy name's|\bi am called|\bcall me|\bje m'appelle|\bich heiße|\bme llamo|\bmi chiamo)\s+({name})"
            )),
            1,
        ),
        // Labels with a colon: "Patient: John Smith", "Name: ...", "Next of kin: ...".
        (
            re(&format!(
                r"(?i:\b(?:patient|pt|name|patient name|full name|surname|first name|last name|mother|father|wife|husband|son|daughter|spouse|partner|guardian|next of kin|emergency contact|contact person|caregiver|referring (?:physician|doctor)|physician|attending|gp|nurse|signed|seen by|dictated by|nom|prénom|nombre|patientin|patient name))\s*[:\-]\s*({name}(?:,\s*{CAP_WORD})?)"
            )),
            1,
        ),
        // "Patient John Smith", "pt Mary Jones" (two capitalised words).
        (
            re(&format!(
                r"(?i:\b(?:patient|pt\.?|client|resident))\s+({CAP_WORD}\s+{CAP_WORD})"
            )),
            1,
        ),
        // Relatives named in passing: "her son Tom", "his wife, Mary Ellen".
        (
            re(&format!(
                r"(?i:\b(?:his|her|my|their|the patient's|patient's)\s+(?:wife|husband|son|daughter|mother|father|mom|mum|dad|sister|brother|partner|friend|neighbou?r|grandson|granddaughter|grandmother|grandfather|aunt|uncle|niece|nephew|carer|caregiver|boyfriend|girlfriend|fianc[ée]e?)),?\s+({name})"
            )),
            1,
        ),
        // "Smith, John" in a header position: surname, given name.
        (re(&format!(r"(?m)^\s*({CAP_WORD},\s+{CAP_WORD})\s*$")), 1),
    ]
});

/// Common given names (several cultures). A given name followed by a capitalised word is taken as a full
/// name ("... spoke with Maria Lopez ..."); alone it is not (too many are also ordinary words).
#[rustfmt::skip]
const GIVEN_NAMES: &[&str] = &[
    "James", "John", "Robert", "Michael", "William", "David", "Richard", "Joseph", "Thomas",
    "Charles", "Christopher", "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven", "Paul", "Andrew",
    "Joshua", "Kenneth", "Kevin", "Brian", "George", "Timothy", "Ronald", "Edward", "Jason", "Jeffrey", "Ryan",
    "Jacob", "Gary", "Nicholas", "Eric", "Jonathan", "Stephen", "Larry", "Justin", "Scott", "Brandon", "Benjamin",
    "Samuel", "Gregory", "Alexander", "Frank", "Patrick", "Raymond", "Jack", "Dennis", "Jerry", "Tyler", "Aaron",
    "Jose", "Adam", "Nathan", "Henry", "Douglas", "Zachary", "Peter", "Kyle", "Noah", "Ethan", "Jeremy", "Walter",
    "Christian", "Keith", "Roger", "Terry", "Austin", "Sean", "Gerald", "Carl", "Harold", "Dylan", "Arthur",
    "Lawrence", "Jordan", "Jesse", "Bryan", "Billy", "Bruce", "Gabriel", "Joe", "Logan", "Albert", "Willie", "Alan",
    "Eugene", "Russell", "Vincent", "Philip", "Bobby", "Johnny", "Bradley", "Mary", "Patricia", "Jennifer", "Linda",
    "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah", "Karen", "Lisa", "Nancy", "Betty", "Sandra", "Margaret",
    "Ashley", "Kimberly", "Emily", "Donna", "Michelle", "Carol", "Amanda", "Melissa", "Deborah", "Stephanie",
    "Dorothy", "Rebecca", "Sharon", "Laura", "Cynthia", "Amy", "Kathleen", "Angela", "Shirley", "Brenda", "Emma",
    "Anna", "Pamela", "Nicole", "Samantha", "Katherine", "Christine", "Helen", "Debra", "Rachel", "Carolyn",
    "Janet", "Maria", "Catherine", "Heather", "Diane", "Olivia", "Julie", "Joyce", "Victoria", "Ruth", "Virginia",
    "Lauren", "Kelly", "Christina", "Joan", "Evelyn", "Judith", "Andrea", "Hannah", "Megan", "Cheryl", "Jacqueline",
    "Martha", "Madison", "Teresa", "Gloria", "Sara", "Janice", "Ann", "Kathryn", "Abigail", "Sophia", "Frances",
    "Jean", "Alice", "Judy", "Isabella", "Julia", "Grace", "Amber", "Denise", "Danielle", "Marilyn", "Beverly",
    "Charlotte", "Natalie", "Theresa", "Diana", "Brittany", "Doris", "Kayla", "Alexis", "Lori", "Marie", "Sophie",
    "Mohammed", "Muhammad", "Ahmed", "Ali", "Omar", "Fatima", "Aisha", "Hassan", "Ibrahim", "Yusuf", "Priya",
    "Rahul", "Amit", "Anil", "Sunil", "Ravi", "Deepak", "Anjali", "Pooja", "Wei", "Li", "Ming", "Jing", "Xiaoming",
    "Hiroshi", "Yuki", "Kenji", "Sakura", "Min-jun", "Seo-yeon", "Juan", "Carlos", "Luis", "Miguel", "Javier",
    "Alejandro", "Pedro", "Sofia", "Lucia", "Carmen", "Isabel", "Pierre", "Jean-Pierre", "Marc", "Louis", "Camille",
    "Chloe", "Hans", "Klaus", "Jürgen", "Stefan", "Anja", "Giovanni", "Giuseppe", "Francesca", "Ivan", "Olga",
    "Dmitri", "Natasha", "Kwame", "Chinedu", "Oluwaseun", "Ngozi", "Tom", "Tim", "Jim", "Bob", "Bill", "Mike",
    "Dave", "Steve", "Sam", "Ben", "Dan", "Kate", "Sue", "Liz", "Jenny", "Lucy", "Ellie", "Molly", "Rosa", "Elena",
    "Ana", "Marta", "Eva", "Ingrid", "Lars",
];

/// "Patient John presented ...": a known given name right after "patient".
static PATIENT_GIVEN: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r"(?i:\b(?:patient|pt\.?|client|resident))\s+((?:{})\b)",
        GIVEN_NAMES
            .iter()
            .map(|n| regex::escape(n))
            .collect::<Vec<_>>()
            .join("|")
    ))
});

static GIVEN_PAIR: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r"\b(?:{})\s+(?:[A-Z]\.\s+)?(?:{CAP_WORD})\b",
        GIVEN_NAMES
            .iter()
            .map(|n| regex::escape(n))
            .collect::<Vec<_>>()
            .join("|")
    ))
});

/// Capitalised words that follow a given name without being a surname ("Grace Period", "Mark Down").
#[rustfmt::skip]
const NOT_SURNAMES: &[&str] = &[
    "The", "And", "But", "Or", "If", "When", "Then", "Disease", "Syndrome", "Hospital", "Clinic",
    "Center", "Centre", "Street", "Road", "Avenue", "University", "Medical", "Health", "Department", "Ward", "Unit",
    "Is", "Was", "Has", "Had", "Period", "Scale", "Score", "Test", "Sign", "Criteria", "Protocol", "Trial", "Study",
    "Index", "Method", "Law",
];

fn detect(text: &str, max_age: u32, out: &mut Vec<PhiSpan>) {
    for p in PATTERNS.iter() {
        for c in p.re.captures_iter(text) {
            let Some(m) = c.get(p.group) else { continue };
            if p.kind == PhiKind::Date && !plausible_date(text, &c) {
                continue;
            }
            if matches!(
                p.kind,
                PhiKind::Id | PhiKind::License | PhiKind::Account | PhiKind::Zip
            ) && !m.as_str().chars().any(|ch| ch.is_ascii_digit())
            {
                continue;
            }
            // "10:30:45" is a time; an IPv6 address has "::" or at least five colons.
            if p.kind == PhiKind::Ip
                && m.as_str().contains(':')
                && !m.as_str().contains("::")
                && m.as_str().matches(':').count() < 5
            {
                continue;
            }
            let (start, end) = trim_span(text, m.start(), m.end());
            if matches!(p.kind, PhiKind::Phone | PhiKind::Fax) {
                let digits = text[start..end]
                    .chars()
                    .filter(|c| c.is_ascii_digit())
                    .count();
                if !(7..=15).contains(&digits) || followed_by_unit(text, end) {
                    continue;
                }
            }
            out.push(PhiSpan {
                start,
                end,
                kind: p.kind,
            });
        }
    }
    for c in AGE.captures_iter(text) {
        let Some(num) = c.get(1).or(c.get(2)).or(c.get(3)) else {
            continue;
        };
        let Ok(age) = num.as_str().parse::<u32>() else {
            continue;
        };
        if age > max_age && age < 130 {
            let m = c.get(0).unwrap();
            // Keep the label ("aged"): redact from the number to the end of the match.
            let start = if c.get(2).is_some() {
                num.start()
            } else {
                m.start()
            };
            out.push(PhiSpan {
                start,
                end: m.end(),
                kind: PhiKind::Age,
            });
        }
    }
    for (re, g) in NAME_PATTERNS.iter() {
        for c in re.captures_iter(text) {
            if let Some(m) = c.get(*g) {
                let (start, end) = trim_name(text, m.start(), m.end());
                if end > start {
                    out.push(PhiSpan {
                        start,
                        end,
                        kind: PhiKind::Name,
                    });
                }
            }
        }
    }
    for c in PATIENT_GIVEN.captures_iter(text) {
        let m = c.get(1).unwrap();
        out.push(PhiSpan {
            start: m.start(),
            end: m.end(),
            kind: PhiKind::Name,
        });
    }
    for m in GIVEN_PAIR.find_iter(text) {
        let last = m.as_str().split_whitespace().last().unwrap_or("");
        if NOT_SURNAMES.contains(&last) {
            continue;
        }
        out.push(PhiSpan {
            start: m.start(),
            end: m.end(),
            kind: PhiKind::Name,
        });
    }
}

/// Drops words that name a role or a clinical word rather than a person from the end of a name match
/// ("Dr. Smith Reports" -> "Smith").
fn trim_name(text: &str, start: usize, end: usize) -> (usize, usize) {
    const STOP: &[&str] = &[
        "The",
        "He",
        "She",
        "They",
        "We",
        "I",
        "Is",
        "Was",
        "Has",
        "Had",
        "Says",
        "Said",
        "Reports",
        "Reported",
        "Presented",
        "Presents",
        "Came",
        "Called",
        "Will",
        "Today",
        "Yesterday",
        "On",
        "At",
        "In",
        "From",
        "For",
        "With",
        "And",
        "Who",
        "Patient",
        "Doctor",
        "Nurse",
        "Department",
        "Hospital",
        "Clinic",
    ];
    let s = &text[start..end];
    let mut words: Vec<(usize, &str)> = s
        .split_whitespace()
        .map(|w| (w.as_ptr() as usize - s.as_ptr() as usize, w))
        .collect();
    // A label pattern can pick up the title itself ("physician: Dr. Tanaka"); the title pattern takes the name.
    while words
        .first()
        .is_some_and(|(_, w)| TITLES.split('|').any(|t| t == w.trim_end_matches('.')))
    {
        words.remove(0);
    }
    while let Some((_, w)) = words.last() {
        if STOP.contains(&w.trim_end_matches(['.', ',', '\''])) {
            words.pop();
        } else {
            break;
        }
    }
    match (words.first(), words.last()) {
        (Some(&(a, _)), Some(&(b, w))) if !STOP.contains(&words[0].1) => {
            let w = w.trim_end_matches([',', '.', ';', ':']);
            let w = w
                .strip_suffix("'s")
                .or_else(|| w.strip_suffix("’s"))
                .unwrap_or(w);
            let end = start + b + w.len();
            (start + a, end)
        }
        _ => (start, start),
    }
}

/// Drops trailing punctuation and space; a closing parenthesis only when it has no opening one in the span (a URL
/// such as "wiki/Foo_(bar)" keeps it).
fn trim_span(text: &str, start: usize, mut end: usize) -> (usize, usize) {
    while end > start {
        let span = &text[start..end];
        let unbalanced =
            span.ends_with(')') && span.matches(')').count() > span.matches('(').count();
        if !(span.ends_with(['.', ',', ';', ':', ' ', '-']) || unbalanced) {
            break;
        }
        end -= 1;
    }
    (start, end)
}

/// A number followed by a unit is a measurement, not a phone number ("1500-2000 mg").
fn followed_by_unit(text: &str, end: usize) -> bool {
    let rest = text[end..].trim_start();
    let word: String = rest
        .chars()
        .take_while(|c| c.is_alphabetic() || *c == '/' || *c == '%')
        .collect::<String>()
        .to_lowercase();
    [
        "mg", "g", "mcg", "ml", "l", "mmol", "units", "iu", "kg", "cm", "mm", "%", "bpm", "mmhg",
        "per", "x",
    ]
    .contains(&word.as_str())
        || word.starts_with("mg/")
        || word.starts_with("mmol/")
}

/// Rejects month-name matches that are ordinary words ("patients aged 5 may", "to march 3 miles").
fn plausible_date(text: &str, c: &regex::Captures) -> bool {
    let Some(month) = c.get(1) else { return true };
    let word = month.as_str();
    // English month words that are also ordinary words; French and Spanish months are written in lower case.
    let ambiguous = ["may", "mar", "march", "jun", "sept", "dec"];
    if ambiguous.contains(&word.to_lowercase().as_str())
        && word.chars().next().is_some_and(|ch| ch.is_lowercase())
    {
        return false;
    }
    // "May 5 mg" is a dose, not a date.
    !followed_by_unit(text, c.get(0).unwrap().end())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(String, PhiKind)> {
        Redactor::default()
            .find(text)
            .into_iter()
            .map(|s| (text[s.start..s.end].to_string(), s.kind))
            .collect()
    }

    #[test]
    fn typed_placeholders() {
        let r = Redactor::default().redact(
            "Seen 2024-03-05 by Dr. Jane Smith, call +44 20 7946 0958 or jane@example.org.",
        );
        assert_eq!(
            r.text,
            "Seen [DATE] by Dr. [NAME], call [PHONE] or [EMAIL]."
        );
        assert_eq!(r.spans.len(), 4);
    }

    #[test]
    fn clinical_content_survives() {
        for s in [
            "Amoxicillin 500 mg twice daily for 7 days.",
            "K 5.2 mmol/L, Na 138, BP 140/90, HR 88 bpm, temp 38.5 C.",
            "Diagnosis: J18.9 pneumonia; consider I10 and E11.9.",
            "A 45-year-old man with chest pain for 3 days, aged 89.",
            "Paracetamol 1 g every 6 hours, maximum 4 g per day; platelets 150-400 x10^9/L.",
            "Parkinson's disease and Crohn's disease; Hodgkin lymphoma.",
        ] {
            assert_eq!(
                Redactor::default().redact(s).text,
                s,
                "changed: {:?}",
                kinds(s)
            );
        }
    }

    #[test]
    fn ages_over_89_and_locales() {
        assert_eq!(redact("a 93-year-old woman"), "a [AGE] woman");
        assert_eq!(
            redact("aged 95, seen 5 March 2024"),
            "aged [AGE], seen [DATE]"
        );
        assert_eq!(redact("入院日期2024年3月5日"), "入院日期[DATE]");
        assert_eq!(
            redact("am 5. März 2024 in Hauptstraße 12"),
            "am [DATE] in [ADDRESS]"
        );
        assert_eq!(
            redact("patients aged 5 may need less"),
            "patients aged 5 may need less"
        );
    }

    #[test]
    fn known_names_and_kind_filter() {
        let r = Redactor::new(RedactorOptions {
            known_names: vec!["Zebulon Quix".into()],
            ..Default::default()
        });
        assert_eq!(
            r.redact("zebulon quix has a cough").text,
            "[NAME] has a cough"
        );
        let only_dates = Redactor::new(RedactorOptions {
            kinds: vec![PhiKind::Date],
            ..Default::default()
        });
        assert_eq!(
            only_dates.redact("Dr. Smith on 03/05/2024").text,
            "Dr. Smith on [DATE]"
        );
        assert_eq!(PhiKind::parse("[phone]"), Some(PhiKind::Phone));
    }

    /// URLs in the layouts that used to swallow their delimiters: inside JSON strings (quote, escaped quote,
    /// escaped newline, backslash), in parentheses, in markdown links, and before sentence punctuation.
    #[test]
    fn urls_stop_at_their_delimiters() {
        for (text, want) in [
            (
                r#"{"note":"portal https://portal.example.org/p/123","n":1}"#,
                r#"{"note":"portal [URL]","n":1}"#,
            ),
            (
                r#"{"note":"see \"https://x.example.org/a?id=7\" now"}"#,
                r#"{"note":"see \"[URL]\" now"}"#,
            ),
            (
                r#"{"u":"mychart.example.com/patient/42","b":[1,2]}"#,
                r#"{"u":"[URL]","b":[1,2]}"#,
            ),
            (
                r#"["www.clinic.com/x\nnext line"]"#,
                r#"["[URL]\nnext line"]"#,
            ),
            (
                r"C:\\share\\https://h.example.org\\f",
                r"C:\\share\\[URL]\\f",
            ),
            (
                "Results (https://lab.example.com/r?id=77) attached.",
                "Results ([URL]) attached.",
            ),
            (
                "See https://en.wikipedia.org/wiki/Foo_(bar) for more.",
                "See [URL] for more.",
            ),
            (
                "[portal](https://mychart.example.org/login)",
                "[portal]([URL])",
            ),
            ("Visit www.clinic-portal.com/login.", "Visit [URL]."),
            ("Is it https://a.example.org/x?", "Is it [URL]?"),
            ("Go to https://a.example.org/x!", "Go to [URL]!"),
            ("https://a.example.org/x, then call", "[URL], then call"),
            ("at https://a.example.org/x; then", "at [URL]; then"),
            ("link: `https://a.example.org/x`", "link: `[URL]`"),
            ("| https://a.example.org/x | row |", "| [URL] | row |"),
            ("'http://a.example.net/q=1'", "'[URL]'"),
            ("<https://a.example.org/x>", "<[URL]>"),
            ("{https://a.example.org/x}", "{[URL]}"),
            (
                "query https://a.example.org/s?q=a,b;c=d ok",
                "query [URL] ok",
            ),
        ] {
            assert_eq!(redact(text), want, "{text}");
        }
    }

    /// Redacting JSON text keeps it JSON, and every string comes out as if redacted on its own.
    #[test]
    fn redacted_json_stays_json() {
        let value = serde_json::json!({
            "a": "portal https://portal.example.org/p/123\" and more",
            "b": "line one www.clinic.com/visits/9\nline two",
            "c": ["(https://lab.example.com/r?id=77)", "end with www.x.com/a\\"],
            "d": "mychart.example.com/patient/42",
        });
        let text = serde_json::to_string(&value).unwrap();
        let out = redact(&text);
        let back: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("redaction broke the JSON: {e}\n{out}"));
        assert_eq!(back["a"], redact(value["a"].as_str().unwrap()));
        assert_eq!(back["b"], "line one [URL]\nline two");
        assert_eq!(back["c"][0], "([URL])");
        assert_eq!(back["c"][1], "end with [URL]\\");
        assert_eq!(back["d"], "[URL]");
    }
}
