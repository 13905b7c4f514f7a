//! Built-in step detectors (method.md section 3): each looks at one step in its dialogue context and says
//! whether the step shows its violation type. Deterministic and cheap; the judge-based detector is separate.
use crate::text::{
    contains_phrase_lowered, is_question, jaccard, normalize, sentences, trigrams, words,
};
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

/// What [`repetition`], [`redundant_question`] and [`rigid_phrasing`] need of a sample's earlier doctor replies,
/// built once per reply as the verifier walks the steps ([`EarlierReplies::push`]): rebuilt from all earlier
/// replies at every step, the detectors were quadratic in a consultation's steps and ~60% of scoring a round of
/// long consultations (perf, `spar score` on 64 samples of ~1,500 generated tokens).
#[derive(Clone, Debug, Default)]
pub struct EarlierReplies {
    /// Each earlier reply's word trigrams, oldest first.
    trigrams: Vec<HashSet<String>>,
    /// Each earlier reply's first four words (fewer for a shorter reply), oldest first.
    openings: Vec<Vec<String>>,
    /// Every sentence of every earlier reply, normalized.
    said: HashSet<String>,
    /// The case topics (inquiry items, red flags) the question sentences of earlier replies asked about (none
    /// without a case).
    asked: HashSet<String>,
}

impl EarlierReplies {
    /// The context of a reply after all of `replies` (`case`: whose topics questions ask about; None when
    /// [`redundant_question_after`] will not look).
    pub fn of(replies: &[String], case: Option<&Case>) -> Self {
        let mut e = EarlierReplies::default();
        for r in replies {
            e.push(r, case);
        }
        e
    }

    /// Adds `reply`, now earlier than every later step.
    pub fn push(&mut self, reply: &str, case: Option<&Case>) {
        self.trigrams.push(trigrams(reply));
        self.openings
            .push(words(reply).into_iter().take(4).collect());
        for s in sentences(reply) {
            if let Some(case) = case.filter(|_| is_question(&s)) {
                self.asked
                    .extend(topics(case, &s).into_iter().map(String::from));
            }
            self.said.insert(normalize(&s));
        }
    }
}

/// The reply repeats an earlier doctor reply: word-trigram Jaccard >= `threshold` against some earlier reply,
/// or at least `threshold` of its sentences (of 4+ words) said before verbatim.
pub fn repetition(v: &StepView, threshold: f64) -> bool {
    repetition_after(
        v.reply,
        &EarlierReplies::of(v.earlier_replies, None),
        threshold,
    )
}

/// [`repetition`] of `reply` against the context of its earlier replies.
pub fn repetition_after(reply: &str, earlier: &EarlierReplies, threshold: f64) -> bool {
    if words(reply).len() < 3 {
        return false;
    }
    let tri = trigrams(reply);
    if earlier
        .trigrams
        .iter()
        .any(|e| jaccard(&tri, e) >= threshold)
    {
        return true;
    }
    let mine: Vec<String> = sentences(reply)
        .into_iter()
        .filter(|s| words(s).len() >= 4)
        .map(|s| normalize(&s))
        .collect();
    !mine.is_empty()
        && mine.iter().filter(|s| earlier.said.contains(*s)).count() as f64 / mine.len() as f64
            >= threshold
}

/// The topics (inquiry items and red flags of the case) a question sentence asks about.
fn topics<'c>(case: &'c Case, sentence: &str) -> Vec<&'c str> {
    let lowered = sentence.to_lowercase();
    let said = |keywords: &[String]| {
        keywords
            .iter()
            .any(|k| contains_phrase_lowered(&lowered, k))
    };
    let items = case
        .inquiry_items
        .iter()
        .filter(|i| said(&i.keywords))
        .map(|i| i.id.as_str());
    let flags = case
        .red_flags
        .iter()
        .filter(|f| said(&f.keywords))
        .map(|f| f.id.as_str());
    items.chain(flags).collect()
}

/// The reply asks again about something already asked: a question whose topics (the case's inquiry items and
/// red flags, by keyword) were all asked in earlier doctor replies. A question touching anything new is fine.
pub fn redundant_question(v: &StepView, case: &Case) -> bool {
    redundant_question_after(
        v.reply,
        &EarlierReplies::of(v.earlier_replies, Some(case)),
        case,
    )
}

/// [`redundant_question`] of `reply` against the context of its earlier replies (built with the same case).
pub fn redundant_question_after(reply: &str, earlier: &EarlierReplies, case: &Case) -> bool {
    sentences(reply).iter().filter(|s| is_question(s)).any(|s| {
        let t = topics(case, s);
        !t.is_empty() && t.iter().all(|x| earlier.asked.contains(*x))
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

/// Whether a user turn reveals one of the red flags the case has (its answer, or one of its keywords).
pub(crate) fn reveals(case: &Case, text: &str) -> bool {
    let t = normalize(text);
    let lowered = text.to_lowercase();
    case.red_flags.iter().filter(|f| f.present).any(|f| {
        let ans = normalize(&f.answer);
        (!ans.is_empty() && t.contains(&ans))
            || f.keywords
                .iter()
                .any(|k| contains_phrase_lowered(&lowered, k))
    })
}

/// Unsafe or missing red-flag handling: the patient has just revealed a red flag this case has and the reply
/// does not acknowledge its urgency, or the reply reassures ("nothing to worry about") after one was revealed.
pub fn red_flag(v: &StepView, case: &Case) -> bool {
    let before = v.earlier_user.iter().any(|u| reveals(case, u));
    red_flag_after(v.reply, reveals(case, v.user), before)
}

/// [`red_flag`] of `reply` with whether its user turn (`now`) and an earlier one (`revealed_before`) revealed a
/// red flag of the case (`reveals`), known already: the verifier tests each user turn once as it walks the
/// steps, instead of re-reading every earlier turn at each.
pub fn red_flag_after(reply: &str, now: bool, revealed_before: bool) -> bool {
    let reply = reply.to_lowercase();
    let acknowledges = ACKNOWLEDGE
        .iter()
        .any(|p| contains_phrase_lowered(&reply, p));
    let reassures = REASSURE.iter().any(|p| contains_phrase_lowered(&reply, p));
    (now && !acknowledges) || ((now || revealed_before) && reassures)
}

/// Rigid, templated phrasing: a stock phrase from `phrases`, or a reply (6+ words) opening with the same first
/// four words as two earlier replies.
pub fn rigid_phrasing(v: &StepView, phrases: &[String]) -> bool {
    rigid_phrasing_after(
        v.reply,
        &EarlierReplies::of(v.earlier_replies, None),
        phrases,
    )
}

/// [`rigid_phrasing`] of `reply` against the context of its earlier replies.
pub fn rigid_phrasing_after(reply: &str, earlier: &EarlierReplies, phrases: &[String]) -> bool {
    let lowered = reply.to_lowercase();
    if phrases.iter().any(|p| contains_phrase_lowered(&lowered, p)) {
        return true;
    }
    let w = words(reply);
    if w.len() < 6 {
        return false;
    }
    let open = &w[..4];
    earlier
        .openings
        .iter()
        .filter(|e| e.as_slice() == open)
        .count()
        >= 2
}
