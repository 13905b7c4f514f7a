//! Built-in step detectors (method.md section 3): each looks at one step in its dialogue context and says
//! whether the step shows its violation type. Deterministic and cheap; the judge-based detector is separate.
use crate::text::{contains_phrase, is_question, jaccard, normalize, sentences, trigrams, words};
use spar_core::Case;
use spar_core::recipe::StepDetector;
use std::collections::HashSet;

/// Violation type names (the keys of `[rewards.spar] lambdas`): each detector's recipe name.
pub const REPETITION: &str = StepDetector::Repetition.name();
pub const REDUNDANT_QUESTION: &str = StepDetector::RedundantQuestion.name();
pub const RED_FLAG: &str = StepDetector::RedFlag.name();
pub const RIGID_PHRASING: &str = StepDetector::RigidPhrasing.name();
pub const JUDGE: &str = StepDetector::Judge.name();

/// What a detector sees of one step.
#[derive(Clone, Copy, Debug)]
pub struct StepView<'a> {
    /// The user turn this reply answers.
    pub user: &'a str,
    pub reply: &'a str,
    /// Earlier doctor replies and earlier user turns, oldest first.
    pub earlier_replies: &'a [String],
    pub earlier_user: &'a [String],
}

/// The reply repeats an earlier doctor reply: word-trigram Jaccard >= `threshold` against some earlier reply,
/// or at least `threshold` of its sentences (of 4+ words) said before verbatim.
pub fn repetition(v: &StepView, threshold: f64) -> bool {
    if words(v.reply).len() < 3 {
        return false;
    }
    let tri = trigrams(v.reply);
    if v.earlier_replies
        .iter()
        .any(|e| jaccard(&tri, &trigrams(e)) >= threshold)
    {
        return true;
    }
    let said: HashSet<String> = v
        .earlier_replies
        .iter()
        .flat_map(|e| sentences(e))
        .map(|s| normalize(&s))
        .collect();
    let mine: Vec<String> = sentences(v.reply)
        .into_iter()
        .filter(|s| words(s).len() >= 4)
        .map(|s| normalize(&s))
        .collect();
    !mine.is_empty()
        && mine.iter().filter(|s| said.contains(*s)).count() as f64 / mine.len() as f64 >= threshold
}

/// The topics (inquiry items and red flags of the case) a question sentence asks about.
fn topics<'c>(case: &'c Case, sentence: &str) -> Vec<&'c str> {
    let items = case
        .inquiry_items
        .iter()
        .filter(|i| i.keywords.iter().any(|k| contains_phrase(sentence, k)))
        .map(|i| i.id.as_str());
    let flags = case
        .red_flags
        .iter()
        .filter(|f| f.keywords.iter().any(|k| contains_phrase(sentence, k)))
        .map(|f| f.id.as_str());
    items.chain(flags).collect()
}

/// The reply asks again about something already asked: a question whose topics (the case's inquiry items and
/// red flags, by keyword) were all asked in earlier doctor replies. A question touching anything new is fine.
pub fn redundant_question(v: &StepView, case: &Case) -> bool {
    let asked: HashSet<&str> = v
        .earlier_replies
        .iter()
        .flat_map(|r| sentences(r))
        .filter(|s| is_question(s))
        .flat_map(|s| topics(case, &s))
        .collect();
    sentences(v.reply)
        .iter()
        .filter(|s| is_question(s))
        .any(|s| {
            let t = topics(case, s);
            !t.is_empty() && t.iter().all(|x| asked.contains(x))
        })
}

const ACKNOWLEDGE: [&str; 18] = [
    "urgent",
    "urgently",
    "emergency",
    "immediately",
    "right away",
    "as soon as possible",
    "911",
    "ambulance",
    "serious",
    "concerning",
    "worrying",
    "alarming",
    "red flag",
    "seek care",
    "seek medical",
    "go to the",
    "emergency department",
    "do not wait",
];
const REASSURE: [&str; 7] = [
    "nothing to worry",
    "not serious",
    "no need to see",
    "no need to worry",
    "just rest",
    "wait and see",
    "nothing serious",
];

fn reveals(case: &Case, text: &str) -> bool {
    let t = normalize(text);
    case.red_flags.iter().filter(|f| f.present).any(|f| {
        let ans = normalize(&f.answer);
        (!ans.is_empty() && t.contains(&ans)) || f.keywords.iter().any(|k| contains_phrase(text, k))
    })
}

/// Unsafe or missing red-flag handling: the patient has just revealed a red flag this case has and the reply
/// does not acknowledge its urgency, or the reply reassures ("nothing to worry about") after one was revealed.
pub fn red_flag(v: &StepView, case: &Case) -> bool {
    let now = reveals(case, v.user);
    let before = v.earlier_user.iter().any(|u| reveals(case, u));
    let acknowledges = ACKNOWLEDGE.iter().any(|p| contains_phrase(v.reply, p));
    let reassures = REASSURE.iter().any(|p| contains_phrase(v.reply, p));
    (now && !acknowledges) || ((now || before) && reassures)
}

/// Rigid, templated phrasing: a stock phrase from `phrases`, or a reply (6+ words) opening with the same first
/// four words as two earlier replies.
pub fn rigid_phrasing(v: &StepView, phrases: &[String]) -> bool {
    if phrases.iter().any(|p| contains_phrase(v.reply, p)) {
        return true;
    }
    let w = words(v.reply);
    if w.len() < 6 {
        return false;
    }
    let open = &w[..4];
    v.earlier_replies
        .iter()
        .filter(|e| words(e).get(..4) == Some(open))
        .count()
        >= 2
}
