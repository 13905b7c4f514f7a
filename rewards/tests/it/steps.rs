//! The built-in step detectors on small dialogues.
use super::fixtures::case;
use spar_rewards::steps::detectors::*;

fn view<'a>(
    user: &'a str,
    reply: &'a str,
    earlier_replies: &'a [String],
    earlier_user: &'a [String],
) -> StepView<'a> {
    StepView {
        user,
        reply,
        earlier_replies,
        earlier_user,
    }
}

#[test]
fn repetition_and_redundancy() {
    let earlier = vec!["How long have you had the fever? Do you smoke?".to_string()];
    assert!(repetition(
        &view(
            "",
            "How long have you had the fever? Do you smoke?",
            &earlier,
            &[]
        ),
        0.6
    ));
    assert!(!repetition(
        &view("", "Are you allergic to penicillin?", &earlier, &[]),
        0.6
    ));
    let c = case();
    assert!(redundant_question(
        &view("", "Do you smoke at all?", &earlier, &[]),
        &c
    ));
    assert!(
        !redundant_question(
            &view(
                "",
                "Do you smoke, and are you allergic to anything?",
                &earlier,
                &[]
            ),
            &c
        ),
        "a new topic in the question"
    );
    assert!(
        !redundant_question(&view("", "Smoking raises your risk.", &earlier, &[]), &c),
        "a statement is not a question"
    );
}

#[test]
fn red_flags_need_acknowledgement() {
    let c = case();
    let reveal = "Yes, there was some blood when I coughed this morning.";
    assert!(red_flag(&view(reveal, "Ok. Do you smoke?", &[], &[]), &c));
    assert!(!red_flag(
        &view(
            reveal,
            "Coughing up blood is concerning; please go to the emergency department today.",
            &[],
            &[]
        ),
        &c
    ));
    let before = vec![reveal.to_string()];
    assert!(
        red_flag(
            &view("ok", "There is nothing to worry about.", &[], &before),
            &c
        ),
        "reassurance after a revealed red flag"
    );
    assert!(!red_flag(
        &view("ok", "There is nothing to worry about.", &[], &[]),
        &c
    ));
}

#[test]
fn rigid_phrasing_detector() {
    let phrases = vec!["i understand your concern".to_string()];
    assert!(rigid_phrasing(
        &view("", "I understand your concern. Any fever?", &[], &[]),
        &phrases
    ));
    let earlier = vec![
        "Thank you for the information, any fever?".to_string(),
        "Thank you for the information, do you smoke?".to_string(),
    ];
    assert!(rigid_phrasing(
        &view(
            "",
            "Thank you for the information, any allergies?",
            &earlier,
            &[]
        ),
        &phrases
    ));
    assert!(!rigid_phrasing(
        &view("", "Any allergies to medicines at all?", &earlier, &[]),
        &phrases
    ));
}
