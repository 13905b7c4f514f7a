//! The scripted expert: the doctor's side of an exemplary consultation of a `Case`, in the stage grammar of
//! `spar_core::grammar`. Gold transcripts for SFT and tests, and a turn-by-turn policy a rollout environment can
//! drive (given the dialogue so far, the next doctor utterance).
//!
//! Inquiry asks one short question per checklist item (critical items and red flags first when the turn budget
//! is short), each phrased with one of the item's keywords, never repeating a topic already covered; then says
//! `<ready/>`; then gives the differential, the tests (essential + a few optional) and the final diagnosis.
//!
//! [`PartialExpert`] is a good but imperfect teacher built on the same plan: per case (seeded) it puts the true
//! diagnosis at a random rank of the differential, orders a random number of optional tests, drops essential
//! tests and skips routine questions. SFT on it leaves behaviour the stage rewards pay for and the teacher never
//! showed, so RL has something to improve on.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spar_core::case::{Case, InquiryItem, RedFlag};
use spar_core::grammar::{self, NamedDx};
use spar_core::sample::{Role, Turn};
use spar_core::stage::Stage;

/// Knobs of the scripted expert.
#[derive(Clone, Debug)]
pub struct ExpertOptions {
    /// Inquiry turn limit, the `<ready/>` turn included (method.md section 9: 12).
    pub inquiry_turns: usize,
    /// How many optional tests to add after the essential ones.
    pub optional_tests: usize,
    /// How many differential entries follow the diagnosis in `<ddx>`.
    pub ddx_alternatives: usize,
}

impl Default for ExpertOptions {
    fn default() -> Self {
        ExpertOptions {
            inquiry_turns: Stage::Inquiry.default_turn_limit() as usize,
            optional_tests: 1,
            ddx_alternatives: 4,
        }
    }
}

/// One planned inquiry question and the checklist item it covers.
#[derive(Clone, Debug, PartialEq)]
pub struct Question {
    /// `inquiry_items[i].id` or `red_flags[i].id`.
    pub item_id: String,
    pub text: String,
    /// The item's keywords (a doctor turn containing one of them covers the item).
    pub keywords: Vec<String>,
    /// What the case says the patient answers.
    pub answer: String,
    pub critical: bool,
}

/// The reply that ends inquiry: it completes Inquiry under `grammar::completes` (a data test checks it).
pub const READY_REPLY: &str = "Thank you, I have what I need. <ready/>";

/// The scripted expert for one case.
#[derive(Clone, Debug)]
pub struct Expert {
    case: Case,
    opts: ExpertOptions,
    plan: Vec<Question>,
}

fn covers(text: &str, keywords: &[String]) -> bool {
    let t = text.to_lowercase();
    keywords
        .iter()
        .any(|k| !k.trim().is_empty() && t.contains(&k.to_lowercase()))
}

/// A short question from the item's own words when the case carries no phrasing of its own: it always contains
/// a keyword, so keyword-based inquiry scoring credits it.
fn fallback_question(topic: &str, keywords: &[String]) -> String {
    let kw = keywords
        .first()
        .map(|k| k.trim().to_string())
        .unwrap_or_else(|| topic.to_string());
    if covers(topic, keywords) {
        format!("Can you tell me about the {topic}?")
    } else {
        format!("Tell me about the {topic}: any {kw}?")
    }
}

fn item_question(case: &Case, it: &InquiryItem) -> Question {
    let text = crate::generate::question_for(case, &it.id)
        .filter(|q| covers(q, &it.keywords))
        .unwrap_or_else(|| fallback_question(&it.topic, &it.keywords));
    Question {
        item_id: it.id.clone(),
        text,
        keywords: it.keywords.clone(),
        answer: it.answer.clone(),
        critical: it.critical,
    }
}

fn flag_question(case: &Case, rf: &RedFlag) -> Question {
    let text = crate::generate::question_for(case, &rf.id)
        .filter(|q| covers(q, &rf.keywords))
        .unwrap_or_else(|| fallback_question(&rf.description.to_lowercase(), &rf.keywords));
    Question {
        item_id: rf.id.clone(),
        text,
        keywords: rf.keywords.clone(),
        answer: rf.answer.clone(),
        critical: true,
    }
}

impl Expert {
    /// The expert with a given question plan (the partial expert's, a subset of the full plan).
    fn with_plan(case: &Case, opts: ExpertOptions, plan: Vec<Question>) -> Expert {
        Expert {
            case: case.clone(),
            opts,
            plan,
        }
    }

    pub fn new(case: &Case) -> Expert {
        Expert::with_options(case, ExpertOptions::default())
    }

    pub fn with_options(case: &Case, opts: ExpertOptions) -> Expert {
        let plan = plan_questions(case, opts.inquiry_turns.saturating_sub(1));
        Expert {
            case: case.clone(),
            opts,
            plan,
        }
    }

    pub fn case(&self) -> &Case {
        &self.case
    }

    /// The inquiry questions in the order they are asked.
    pub fn questions(&self) -> &[Question] {
        &self.plan
    }

    /// The next inquiry reply given the dialogue so far: the first planned question whose item no earlier doctor
    /// turn covers, or [`READY_REPLY`] when all are covered or the turn budget has one turn left.
    pub fn next_inquiry(&self, dialogue: &[Turn]) -> String {
        let asked: Vec<&str> = dialogue
            .iter()
            .filter(|t| t.role == Role::Assistant)
            .map(|t| t.text.as_str())
            .collect();
        if asked.iter().any(|t| grammar::inquiry_done(t))
            || asked.len() + 1 >= self.opts.inquiry_turns
        {
            return READY_REPLY.to_string();
        }
        self.plan
            .iter()
            .find(|q| !asked.iter().any(|a| covers(a, &q.keywords)))
            .map(|q| q.text.clone())
            .unwrap_or_else(|| READY_REPLY.to_string())
    }

    /// The ranked differential: the diagnosis first, then the case's differential.
    pub fn ddx(&self) -> Vec<NamedDx> {
        std::iter::once(&self.case.diagnosis)
            .chain(
                self.case
                    .differential
                    .iter()
                    .take(self.opts.ddx_alternatives),
            )
            .map(|d| NamedDx {
                name: d.name.clone(),
                icd10: Some(d.icd10.clone()),
            })
            .collect()
    }

    /// The recommended tests: every essential test, then the first `optional_tests` optional ones.
    pub fn tests(&self) -> Vec<String> {
        let t = &self.case.tests;
        t.essential
            .iter()
            .chain(t.optional.iter().take(self.opts.optional_tests))
            .map(|x| x.name.clone())
            .collect()
    }

    /// The doctor's reply for one stage, given the dialogue so far.
    pub fn reply(&self, stage: Stage, dialogue: &[Turn]) -> String {
        match stage {
            Stage::Inquiry => self.next_inquiry(dialogue),
            Stage::Ddx => grammar::render_ddx(&self.ddx()),
            Stage::Lab => grammar::render_tests(&self.tests()),
            Stage::Diag => {
                let d = &self.case.diagnosis;
                grammar::render_diagnosis(&NamedDx {
                    name: d.name.clone(),
                    icd10: Some(d.icd10.clone()),
                })
            }
        }
    }

    /// The next doctor utterance, the stage inferred from the dialogue (see [`infer_stage`]).
    pub fn next_utterance(&self, dialogue: &[Turn]) -> (Stage, String) {
        let stage = infer_stage(dialogue);
        (stage, self.reply(stage, dialogue))
    }

    /// The patient's answer to a planned question (the case's answer for the item the question covers).
    pub fn answer_to(&self, question: &str) -> Option<&str> {
        // A re-ask (the partial expert's) gets the same answer.
        let question = question.strip_prefix(REASK_PREFIX).unwrap_or(question);
        self.plan
            .iter()
            .find(|q| q.text == question)
            .map(|q| q.answer.as_str())
    }

    /// A whole gold consultation: patient opening, the inquiry, `<ready/>`, then each stage instruction
    /// (`Stage::default_instruction`) and the expert's reply. Every turn carries its stage.
    pub fn transcript(&self) -> Vec<Turn> {
        play_transcript(self, |stage, d| self.reply(stage, d))
    }
}

/// A whole consultation with the scripted patient of `expert`'s case (its answers to planned questions): the
/// opening, the inquiry until `<ready/>` (or a question the case has no answer for), then each stage instruction
/// and `reply`'s answer. Every turn carries its stage.
fn play_transcript(expert: &Expert, reply: impl Fn(Stage, &[Turn]) -> String) -> Vec<Turn> {
    let mut d = Vec::new();
    let push = |d: &mut Vec<Turn>, role, text: String, stage| {
        d.push(Turn {
            role,
            text,
            stage: Some(stage),
        })
    };
    push(&mut d, Role::User, opening(expert.case()), Stage::Inquiry);
    loop {
        let q = reply(Stage::Inquiry, &d);
        let ready = grammar::inquiry_done(&q);
        let answer = expert.answer_to(&q).map(str::to_string);
        push(&mut d, Role::Assistant, q, Stage::Inquiry);
        match answer {
            Some(a) if !ready => push(&mut d, Role::User, a, Stage::Inquiry),
            _ => break,
        }
    }
    for stage in [Stage::Ddx, Stage::Lab, Stage::Diag] {
        push(
            &mut d,
            Role::User,
            stage.default_instruction().to_string(),
            stage,
        );
        let r = reply(stage, &d);
        push(&mut d, Role::Assistant, r, stage);
    }
    d
}

/// The patient's first words: the chief complaint.
pub fn opening(case: &Case) -> String {
    let cc = case.chief_complaint.trim().trim_end_matches('.');
    let mut c = cc.chars();
    match c.next() {
        Some(f) => format!("Hello doctor. {}{}.", f.to_uppercase(), c.as_str()),
        None => "Hello doctor.".into(),
    }
}

/// Which stage the next doctor reply belongs to: the `stage` of the last user turn when set, else the latest stage
/// whose output tag (`grammar::stage_tag`: `<diagnosis>`, `<tests>`, `<ddx>`) the last user turn asks for, else
/// Inquiry.
pub fn infer_stage(dialogue: &[Turn]) -> Stage {
    let Some(last) = dialogue.iter().rev().find(|t| t.role == Role::User) else {
        return Stage::Inquiry;
    };
    if let Some(s) = last.stage {
        return s;
    }
    let t = last.text.to_ascii_lowercase();
    Stage::ALL
        .into_iter()
        .rev()
        .find(|s| grammar::stage_tag(*s).is_some_and(|tag| t.contains(&grammar::open_tag(tag))))
        .unwrap_or(Stage::Inquiry)
}

/// Picks at most `budget` questions: every critical item and red flag first, then the rest by weight. They are
/// asked the way a clinician orders them: the important history items (critical or weight >= 2, in the case's
/// order), then the red flags, then the routine items. Items whose keywords an earlier question already covers
/// are skipped, so no topic is asked twice (the turn goes to the next item instead).
fn plan_questions(case: &Case, budget: usize) -> Vec<Question> {
    // (priority for the budget, position in the asking order, question)
    let mut all: Vec<(f32, usize, Question)> = Vec::new();
    let n = case.inquiry_items.len();
    for (i, it) in case.inquiry_items.iter().enumerate() {
        let rank = if it.critical { 100.0 } else { 0.0 } + it.weight;
        let pos = if it.critical || it.weight >= 2.0 {
            i
        } else {
            2 * n + i
        };
        all.push((rank, pos, item_question(case, it)));
    }
    for (i, rf) in case.red_flags.iter().enumerate() {
        all.push((50.0 + rf.weight, n + i, flag_question(case, rf)));
    }
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by(|&a, &b| all[b].0.total_cmp(&all[a].0).then(a.cmp(&b)));
    // Fill the budget in priority order, skipping items an already chosen question covers, so a covered item
    // does not waste a turn.
    let mut keep: Vec<usize> = Vec::new();
    for i in order {
        if keep.len() == budget {
            break;
        }
        if !keep
            .iter()
            .any(|&j| covers(&all[j].2.text, &all[i].2.keywords))
        {
            keep.push(i);
        }
    }
    keep.sort_by_key(|&i| all[i].1);
    keep.into_iter().map(|i| all[i].2.clone()).collect()
}

/// The knowledge base the partial expert's differential claims come from and are checked against (recipe
/// `trainer.sft_expert.claims`), and the share of cases whose claim is false.
#[derive(Clone)]
pub struct DdxClaims {
    pub kb: std::sync::Arc<crate::kb::KnowledgeBase>,
    /// Probability that a case's claim is false (refuted by `kb`).
    pub false_rate: f64,
}

impl std::fmt::Debug for DdxClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DdxClaims")
            .field("kb", &self.kb.version())
            .field("false_rate", &self.false_rate)
            .finish()
    }
}

impl PartialEq for DdxClaims {
    fn eq(&self, other: &Self) -> bool {
        self.false_rate == other.false_rate && std::sync::Arc::ptr_eq(&self.kb, &other.kb)
    }
}

/// Knobs of the [`PartialExpert`] (recipe `[trainer.sft_expert]`).
#[derive(Clone, Debug, PartialEq)]
pub struct PartialExpertOptions {
    /// Seeds every case's choices together with the case id (the recipe seed): the same seed gives the same
    /// consultations.
    pub seed: u64,
    /// The true diagnosis sits at a rank drawn uniformly from 1..=this (at most the differential's length).
    pub max_diagnosis_rank: usize,
    /// The number of optional tests is drawn uniformly from 0..=this (at most the case's optional tests).
    pub max_optional_tests: usize,
    /// Each essential test is left out with this probability (one is kept when nothing else would be ordered:
    /// an empty test list does not parse).
    pub drop_essential_test: f64,
    /// Each non-critical inquiry question of the plan is skipped with this probability (critical items and red
    /// flags are always asked).
    pub skip_question: f64,
    /// Each planned question after the first is preceded by a re-ask of an earlier question's topic with this
    /// probability, while the inquiry has spare turns: a redundant question that costs no planned question (so
    /// the stage score does not charge for it; SPAR's `redundant_question` detector does).
    pub reask_rate: f64,
    /// One knowledge-base-decidable claim after the differential (see [`PartialExpert::ddx_claim`]); None: none.
    pub claims: Option<DdxClaims>,
}

impl Default for PartialExpertOptions {
    fn default() -> Self {
        PartialExpertOptions {
            seed: 0,
            max_diagnosis_rank: 3,
            max_optional_tests: 3,
            drop_essential_test: 0.25,
            skip_question: 0.4,
            reask_rate: 0.0,
            claims: None,
        }
    }
}

/// The phrase a re-asked question starts with.
pub const REASK_PREFIX: &str = "Sorry, once more: ";

/// What the partial expert drew for one case.
#[derive(Clone, Debug, PartialEq)]
pub struct PartialChoices {
    /// 1-based rank of the true diagnosis in the differential.
    pub diagnosis_rank: usize,
    /// Optional tests ordered.
    pub optional_tests: usize,
    /// Essential tests left out (names).
    pub dropped_essential: Vec<String>,
    /// Non-critical questions of the full plan (the ones that could be skipped).
    pub skippable_questions: usize,
    /// Item ids of the skipped questions.
    pub skipped_questions: Vec<String>,
    /// Item ids of the re-asked questions (in asking order).
    pub reasked_questions: Vec<String>,
}

/// A good but imperfect scripted doctor: the [`Expert`]'s consultation with per-case, seeded omissions (see
/// [`PartialExpertOptions`]). The final diagnosis stays right; the differential ranks it lower, the test list
/// misses some essentials, the inquiry misses some routine items.
#[derive(Clone, Debug)]
pub struct PartialExpert {
    expert: Expert,
    ddx: Vec<NamedDx>,
    tests: Vec<String>,
    /// The inquiry in asking order, re-asks included (`READY_REPLY` follows).
    script: Vec<String>,
    choices: PartialChoices,
    claims: Option<DdxClaims>,
    /// Seeds the claim's true/false draw (a stream of its own: other choices do not depend on `claims`).
    claim_seed: u64,
}

/// FNV-1a of `s`: a stable hash (std's hasher may change between Rust releases; the choices must not).
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

impl PartialExpert {
    pub fn new(case: &Case, opts: ExpertOptions, partial: &PartialExpertOptions) -> PartialExpert {
        let full = Expert::with_options(case, opts.clone());
        let mut rng = ChaCha8Rng::seed_from_u64(
            partial.seed.wrapping_mul(0x9e3779b97f4a7c15) ^ stable_hash(&case.id),
        );
        // Draw order is fixed (rank, optional count, essential drops, question skips): the choices depend only
        // on the seed and the case.
        let mut ddx = full.ddx();
        let max_rank = partial.max_diagnosis_rank.clamp(1, ddx.len().max(1));
        let diagnosis_rank = rng.random_range(1..=max_rank);
        if !ddx.is_empty() {
            let dx = ddx.remove(0);
            ddx.insert(diagnosis_rank - 1, dx);
        }
        let t = &case.tests;
        let optional_tests = rng
            .random_range(0..=partial.max_optional_tests)
            .min(t.optional.len());
        let mut kept: Vec<String> = Vec::new();
        let mut dropped_essential = Vec::new();
        for e in &t.essential {
            if rng.random_bool(partial.drop_essential_test.clamp(0.0, 1.0)) {
                dropped_essential.push(e.name.clone());
            } else {
                kept.push(e.name.clone());
            }
        }
        if kept.is_empty() && optional_tests == 0 && !dropped_essential.is_empty() {
            kept.push(dropped_essential.remove(0));
        }
        let tests: Vec<String> = kept
            .into_iter()
            .chain(
                t.optional
                    .iter()
                    .take(optional_tests)
                    .map(|x| x.name.clone()),
            )
            .collect();
        let mut plan = Vec::new();
        let (mut skippable_questions, mut skipped_questions) = (0, Vec::new());
        for q in full.questions() {
            if !q.critical {
                skippable_questions += 1;
                if rng.random_bool(partial.skip_question.clamp(0.0, 1.0)) {
                    skipped_questions.push(q.item_id.clone());
                    continue;
                }
            }
            plan.push(q.clone());
        }
        // Re-asks draw from a stream of their own, so the other choices are the same with and without them.
        let stream = |k: u64| {
            ChaCha8Rng::seed_from_u64(
                partial.seed.wrapping_mul(0x9e3779b97f4a7c15) ^ stable_hash(&case.id) ^ k,
            )
        };
        let mut reask_rng = stream(0x0072_6561_736b);
        let spare = opts
            .inquiry_turns
            .saturating_sub(1)
            .saturating_sub(plan.len());
        let mut script: Vec<String> = Vec::new();
        let mut reasked_questions = Vec::new();
        for (i, q) in plan.iter().enumerate() {
            if i > 0
                && reasked_questions.len() < spare
                && partial.reask_rate > 0.0
                && reask_rng.random_bool(partial.reask_rate.clamp(0.0, 1.0))
            {
                let earlier: &Question = &plan[reask_rng.random_range(0..i)];
                reasked_questions.push(earlier.item_id.clone());
                script.push(format!("{REASK_PREFIX}{}", earlier.text));
            }
            script.push(q.text.clone());
        }
        PartialExpert {
            expert: Expert::with_plan(case, opts, plan),
            ddx,
            tests,
            script,
            choices: PartialChoices {
                diagnosis_rank,
                optional_tests,
                dropped_essential,
                skippable_questions,
                skipped_questions,
                reasked_questions,
            },
            claims: partial.claims.clone(),
            claim_seed: partial.seed.wrapping_mul(0x9e3779b97f4a7c15)
                ^ stable_hash(&case.id)
                ^ 0x0063_6c61_696d,
        }
    }

    /// The claim that follows the differential (`trainer.sft_expert.claims`), and whether it is true: `"<code> is
    /// the ICD-10-CM code for <title>."` with the diagnosis' code and, true, its own title (the knowledge base
    /// supports it) or, false (with probability `false_rate`, per case), the title of a differential entry's code
    /// (the knowledge base refutes it). Only claims the knowledge base decides as intended are made: None when
    /// claims are off or no such claim exists for the case.
    pub fn ddx_claim(&self) -> Option<(String, bool)> {
        let c = self.claims.as_ref()?;
        let case = self.expert.case();
        let mut rng = ChaCha8Rng::seed_from_u64(self.claim_seed);
        let truthful = !rng.random_bool(c.false_rate.clamp(0.0, 1.0));
        let code = case.diagnosis.icd10.trim();
        let claim = |title: &str| format!("{code} is the ICD-10-CM code for {title}.");
        let decided = |text: &str, want: spar_core::sample::ClaimLabel| {
            c.kb.verify_claim(text.trim_end_matches('.')).label == want
        };
        use spar_core::sample::ClaimLabel;
        if truthful {
            let text = claim(c.kb.icd10_title(code)?);
            return decided(&text, ClaimLabel::Supported).then_some((text, true));
        }
        case.differential
            .iter()
            .filter(|d| d.icd10.trim() != code)
            .filter_map(|d| c.kb.icd10_title(d.icd10.trim()))
            .map(claim)
            .find(|text| decided(text, ClaimLabel::Refuted))
            .map(|text| (text, false))
    }

    /// What was drawn for this case.
    pub fn choices(&self) -> &PartialChoices {
        &self.choices
    }

    /// The inquiry questions it asks, in order.
    pub fn questions(&self) -> &[Question] {
        self.expert.questions()
    }

    /// Its differential (the true diagnosis at rank `choices().diagnosis_rank`).
    pub fn ddx(&self) -> &[NamedDx] {
        &self.ddx
    }

    /// The tests it orders.
    pub fn tests(&self) -> &[String] {
        &self.tests
    }

    /// The doctor's reply for one stage, given the dialogue so far.
    pub fn reply(&self, stage: Stage, dialogue: &[Turn]) -> String {
        match stage {
            Stage::Inquiry => self.next_inquiry(dialogue),
            Stage::Ddx => match self.ddx_claim() {
                Some((claim, _)) => format!("{} {claim}", grammar::render_ddx(&self.ddx)),
                None => grammar::render_ddx(&self.ddx),
            },
            Stage::Lab => grammar::render_tests(&self.tests),
            Stage::Diag => self.expert.reply(stage, dialogue),
        }
    }

    /// The next inquiry reply: the script's next question (by the number of doctor turns so far), or
    /// [`READY_REPLY`] when it is done or the turn budget has one turn left. Without re-asks this is the
    /// [`Expert`]'s choice over the partial plan.
    fn next_inquiry(&self, dialogue: &[Turn]) -> String {
        if self.choices.reasked_questions.is_empty() {
            return self.expert.next_inquiry(dialogue);
        }
        let asked = dialogue
            .iter()
            .filter(|t| t.role == Role::Assistant)
            .count();
        if dialogue
            .iter()
            .any(|t| t.role == Role::Assistant && grammar::inquiry_done(&t.text))
            || asked + 1 >= self.expert.opts.inquiry_turns
        {
            return READY_REPLY.to_string();
        }
        self.script
            .get(asked)
            .cloned()
            .unwrap_or_else(|| READY_REPLY.to_string())
    }

    /// The next doctor utterance, the stage inferred from the dialogue (see [`infer_stage`]).
    pub fn next_utterance(&self, dialogue: &[Turn]) -> (Stage, String) {
        let stage = infer_stage(dialogue);
        (stage, self.reply(stage, dialogue))
    }

    /// A whole consultation as [`Expert::transcript`] plays it, with this expert's replies.
    pub fn transcript(&self) -> Vec<Turn> {
        play_transcript(&self.expert, |stage, d| self.reply(stage, d))
    }
}

/// One gold consultation as written by `spar data expert` (JSONL, one per line): SFT input.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldTranscript {
    pub case_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<crate::splits::Split>,
    /// The whole consultation; doctor turns are `assistant`, every turn carries its stage.
    pub turns: Vec<Turn>,
}

/// Gold consultations of `cases`, split labels taken from `splits` when given.
pub fn gold_transcripts(
    cases: &[Case],
    splits: Option<&crate::splits::Splits>,
) -> Vec<GoldTranscript> {
    cases
        .iter()
        .map(|c| GoldTranscript {
            case_id: c.id.clone(),
            split: splits.and_then(|s| s.split_of(&c.id)),
            turns: Expert::new(c).transcript(),
        })
        .collect()
}
