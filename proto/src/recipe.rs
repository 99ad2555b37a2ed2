//! Join recipes: how a bot gets into one platform's meeting page. A recipe is data, not code.
//!
//! This module owns the recipe's JSON shape and its pure validation (no I/O, no browser). The
//! browser confirms that selectors compile before the join starts; this check catches what can
//! be caught without one, so the controller can refuse a bad recipe with a 4xx.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest a single step may wait for its element, so a typo cannot park a bot for an hour.
pub const MAX_STEP_TIMEOUT_SECS: u64 = 600;
/// How long `click` and `fill` wait for their element to become visible when not told.
pub const DEFAULT_STEP_TIMEOUT_SECS: u64 = 15;
/// How long a bot may sit in a waiting room before giving up with `waiting_room_timeout`.
pub const DEFAULT_WAITING_ROOM_TIMEOUT_SECS: u64 = 900;
/// Placeholders a recipe's text may use.
pub const PLACEHOLDERS: [&str; 2] = ["{bot_name}", "{recording_id}"];

/// A platform's join recipe, exactly as `DESIGN.md` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Visible while the bot waits to be admitted; recording does not start meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_room_when: Option<String>,
    /// Visible once the meeting is over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_when: Option<String>,
    /// Elements hidden from the recording (self view, the bot's own tile, banners).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hide_selectors: Vec<String>,
    #[serde(default = "default_waiting_room_timeout")]
    pub waiting_room_timeout_secs: u64,
    /// How the bot leaves the call when it is still in it at the end (a stop, a limit, a failed
    /// capture), so the others see it go: steps like `steps`, within the stopping deadline. Not
    /// run when the meeting ended, the page is gone or the bot was removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leave: Vec<Step>,
}

fn default_waiting_room_timeout() -> u64 {
    DEFAULT_WAITING_ROOM_TIMEOUT_SECS
}

/// One join step. On the wire a step is an object whose one action key names its kind:
/// `{"fill": {"selector": "#name", "text": "{bot_name}"}}`, `{"click": "#join"}`,
/// `{"wait_for": ".in-meeting", "timeout_secs": 20}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Map<String, Value>", into = "Map<String, Value>")]
pub enum Step {
    /// Focus the element and type `text` as real key events.
    Fill { selector: String, text: String, timeout_secs: Option<u64> },
    /// Dispatch a real mouse click at the element's centre.
    Click { selector: String, timeout_secs: Option<u64> },
    /// Wait until a matching element is visible.
    WaitFor { selector: String, timeout_secs: Option<u64> },
}

/// The step kinds a recipe may use, in the order the docs list them.
pub const STEP_KINDS: [&str; 3] = ["fill", "click", "wait_for"];

impl Step {
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Fill { .. } => "fill",
            Step::Click { .. } => "click",
            Step::WaitFor { .. } => "wait_for",
        }
    }

    pub fn selector(&self) -> &str {
        match self {
            Step::Fill { selector, .. } | Step::Click { selector, .. } | Step::WaitFor { selector, .. } => selector,
        }
    }

    pub fn timeout_secs(&self) -> u64 {
        match self {
            Step::Fill { timeout_secs, .. } | Step::Click { timeout_secs, .. } | Step::WaitFor { timeout_secs, .. } => {
                timeout_secs.unwrap_or(DEFAULT_STEP_TIMEOUT_SECS)
            }
        }
    }
}

impl TryFrom<Map<String, Value>> for Step {
    type Error = String;

    fn try_from(mut map: Map<String, Value>) -> Result<Self, Self::Error> {
        let kinds: Vec<&String> = map.keys().filter(|k| STEP_KINDS.contains(&k.as_str())).collect();
        let kind = match kinds.as_slice() {
            [one] => (*one).clone(),
            [] => {
                let found: Vec<&str> = map.keys().map(String::as_str).collect();
                return Err(format!("unknown step {found:?}: a step is one of {}", STEP_KINDS.join(", ")));
            }
            many => return Err(format!("a step has exactly one action, found {many:?}")),
        };
        let action = map.remove(&kind).unwrap_or(Value::Null);
        let timeout_secs = match map.remove("timeout_secs") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| format!("{kind}: timeout_secs must be a whole number of seconds"))?),
        };
        if let Some(extra) = map.keys().next() {
            return Err(format!("{kind}: unknown field `{extra}` (expected timeout_secs)"));
        }
        let as_selector = |v: Value| match v {
            Value::String(s) => Ok(s),
            other => Err(format!("{kind}: expected a selector string, found {other}")),
        };
        match kind.as_str() {
            "fill" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct FillSpec {
                    selector: String,
                    text: String,
                }
                let spec: FillSpec = serde_json::from_value(action).map_err(|e| format!("fill: {e}"))?;
                Ok(Step::Fill { selector: spec.selector, text: spec.text, timeout_secs })
            }
            "click" => Ok(Step::Click { selector: as_selector(action)?, timeout_secs }),
            "wait_for" => Ok(Step::WaitFor { selector: as_selector(action)?, timeout_secs }),
            other => unreachable!("kind {other} was filtered against STEP_KINDS"),
        }
    }
}

impl From<Step> for Map<String, Value> {
    fn from(step: Step) -> Self {
        let mut map = Map::new();
        let timeout = match step {
            Step::Fill { selector, text, timeout_secs } => {
                map.insert("fill".into(), serde_json::json!({"selector": selector, "text": text}));
                timeout_secs
            }
            Step::Click { selector, timeout_secs } => {
                map.insert("click".into(), Value::String(selector));
                timeout_secs
            }
            Step::WaitFor { selector, timeout_secs } => {
                map.insert("wait_for".into(), Value::String(selector));
                timeout_secs
            }
        };
        if let Some(t) = timeout {
            map.insert("timeout_secs".into(), Value::from(t));
        }
        map
    }
}

/// Why a recipe was refused; `field` names where, as a JSON path a user can find.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid recipe at {field}: {reason}")]
pub struct RecipeError {
    pub field: String,
    pub reason: String,
}

impl RecipeError {
    fn new(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self { field: field.into(), reason: reason.to_string() }
    }
}

impl Recipe {
    /// Parses and validates a recipe from JSON text.
    pub fn from_json(text: &str) -> Result<Self, RecipeError> {
        let recipe: Recipe = serde_json::from_str(text).map_err(|e| {
            // serde reports the position; the step's own message says what was wrong.
            RecipeError::new(format!("line {} column {}", e.line(), e.column()), e)
        })?;
        recipe.validate()?;
        Ok(recipe)
    }

    /// Every check that needs no browser: names, selectors' syntax, timeouts, placeholders.
    pub fn validate(&self) -> Result<(), RecipeError> {
        if self.name.trim().is_empty() {
            return Err(RecipeError::new("name", "must not be empty"));
        }
        for (list, steps) in [("steps", &self.steps), ("leave", &self.leave)] {
            for (i, step) in steps.iter().enumerate() {
                let at = format!("{list}[{i}].{}", step.kind());
                check_selector(step.selector()).map_err(|r| RecipeError::new(&at, r))?;
                let t = step.timeout_secs();
                if t == 0 || t > MAX_STEP_TIMEOUT_SECS {
                    return Err(RecipeError::new(
                        format!("{list}[{i}].timeout_secs"),
                        format!("must be between 1 and {MAX_STEP_TIMEOUT_SECS}, got {t}"),
                    ));
                }
                if let Step::Fill { text, .. } = step {
                    check_placeholders(text).map_err(|r| RecipeError::new(format!("{at}.text"), r))?;
                }
            }
        }
        for (field, sel) in [("waiting_room_when", &self.waiting_room_when), ("ended_when", &self.ended_when)] {
            if let Some(sel) = sel {
                check_selector(sel).map_err(|r| RecipeError::new(field, r))?;
            }
        }
        for (i, sel) in self.hide_selectors.iter().enumerate() {
            check_selector(sel).map_err(|r| RecipeError::new(format!("hide_selectors[{i}]"), r))?;
        }
        if self.waiting_room_timeout_secs == 0 {
            return Err(RecipeError::new("waiting_room_timeout_secs", "must be at least 1"));
        }
        Ok(())
    }

    /// Every selector the recipe uses, with where it stands, for the browser's compile check.
    pub fn selectors(&self) -> Vec<(String, &str)> {
        let mut out: Vec<(String, &str)> =
            self.steps.iter().enumerate().map(|(i, s)| (format!("steps[{i}].{}", s.kind()), s.selector())).collect();
        out.extend(self.leave.iter().enumerate().map(|(i, s)| (format!("leave[{i}].{}", s.kind()), s.selector())));
        out.extend(self.waiting_room_when.as_deref().map(|s| ("waiting_room_when".to_string(), s)));
        out.extend(self.ended_when.as_deref().map(|s| ("ended_when".to_string(), s)));
        out.extend(self.hide_selectors.iter().enumerate().map(|(i, s)| (format!("hide_selectors[{i}]"), s.as_str())));
        out
    }
}

/// Fills `{bot_name}` and `{recording_id}` into a step's text.
pub fn substitute(text: &str, bot_name: &str, recording_id: &str) -> String {
    text.replace("{bot_name}", bot_name).replace("{recording_id}", recording_id)
}

/// A syntax check that needs no CSS engine: non-empty, brackets and quotes balanced. The
/// browser has the last word (`document.querySelector` throws on what it cannot parse).
fn check_selector(sel: &str) -> Result<(), String> {
    if sel.trim().is_empty() {
        return Err("selector must not be empty".into());
    }
    let mut stack = Vec::new();
    let mut quote: Option<char> = None;
    let mut chars = sel.chars();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            match c {
                '\\' => {
                    chars.next();
                }
                c if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '\\' => {
                chars.next();
            }
            '"' | '\'' => quote = Some(c),
            '(' | '[' => stack.push(c),
            ')' | ']' => {
                let open = if c == ')' { '(' } else { '[' };
                if stack.pop() != Some(open) {
                    return Err(format!("selector {sel:?} has an unmatched `{c}`"));
                }
            }
            _ => {}
        }
    }
    if quote.is_some() {
        return Err(format!("selector {sel:?} has an unclosed quote"));
    }
    if let Some(open) = stack.pop() {
        return Err(format!("selector {sel:?} has an unclosed `{open}`"));
    }
    Ok(())
}

fn check_placeholders(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let after = &rest[start..];
        let Some(end) = after.find('}') else { break };
        let candidate = &after[..=end];
        let is_word = candidate[1..candidate.len() - 1].chars().all(|c| c.is_ascii_lowercase() || c == '_');
        if is_word && candidate.len() > 2 && !PLACEHOLDERS.contains(&candidate) {
            return Err(format!("unknown placeholder {candidate}; known: {}", PLACEHOLDERS.join(", ")));
        }
        rest = &after[1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN_EXAMPLE: &str = r##"{
      "name": "example-platform",
      "steps": [
        {"fill": {"selector": "#name", "text": "{bot_name}"}},
        {"click": "#join"},
        {"wait_for": ".in-meeting", "timeout_secs": 20}
      ],
      "waiting_room_when": ".lobby",
      "ended_when": ".meeting-ended",
      "hide_selectors": [".self-view"]
    }"##;

    #[test]
    fn parses_the_design_example() {
        let r = Recipe::from_json(DESIGN_EXAMPLE).unwrap();
        assert_eq!(r.steps.len(), 3);
        assert_eq!(r.steps[0], Step::Fill { selector: "#name".into(), text: "{bot_name}".into(), timeout_secs: None });
        assert_eq!(r.steps[1], Step::Click { selector: "#join".into(), timeout_secs: None });
        assert_eq!(r.steps[2].timeout_secs(), 20);
        assert_eq!(r.ended_when.as_deref(), Some(".meeting-ended"));
    }

    #[test]
    fn round_trips_through_json() {
        let r = Recipe::from_json(DESIGN_EXAMPLE).unwrap();
        let again = Recipe::from_json(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(r, again);
    }

    #[test]
    fn unknown_step_is_named() {
        let err = Recipe::from_json(r##"{"name":"x","steps":[{"hover":"#a"}]}"##).unwrap_err();
        assert!(err.to_string().contains("unknown step"), "{err}");
        assert!(err.to_string().contains("hover"), "{err}");
    }

    #[test]
    fn two_actions_in_one_step_are_refused() {
        let err = Recipe::from_json(r##"{"name":"x","steps":[{"click":"#a","wait_for":"#b"}]}"##).unwrap_err();
        assert!(err.to_string().contains("exactly one action"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(Recipe::from_json(r##"{"name":"x","stepz":[]}"##).is_err());
        let err = Recipe::from_json(r##"{"name":"x","steps":[{"click":"#a","delay":3}]}"##).unwrap_err();
        assert!(err.to_string().contains("delay"), "{err}");
    }

    #[test]
    fn bad_selectors_are_refused_with_their_place() {
        for (bad, place) in [
            (r##"{"name":"x","steps":[{"click":"#a[data-x"}]}"##, "steps[0].click"),
            (r##"{"name":"x","steps":[{"click":"  "}]}"##, "steps[0].click"),
            (r##"{"name":"x","ended_when":"div:not(.a"}"##, "ended_when"),
            (r##"{"name":"x","hide_selectors":["a[title='x]"]}"##, "hide_selectors[0]"),
            (r##"{"name":"x","leave":[{"click":"#leave("}]}"##, "leave[0].click"),
            (r##"{"name":"x","leave":[{"click":"#leave","timeout_secs":0}]}"##, "leave[0].timeout_secs"),
        ] {
            let err = Recipe::from_json(bad).unwrap_err();
            assert_eq!(err.field, place, "{bad}: {err}");
        }
        assert!(Recipe::from_json(r##"{"name":"x","ended_when":"a[title='(x']"}"##).is_ok());
    }

    #[test]
    fn timeouts_are_bounded() {
        assert!(Recipe::from_json(r##"{"name":"x","steps":[{"wait_for":"#a","timeout_secs":0}]}"##).is_err());
        assert!(Recipe::from_json(r##"{"name":"x","steps":[{"wait_for":"#a","timeout_secs":601}]}"##).is_err());
        assert!(Recipe::from_json(r##"{"name":"x","steps":[{"wait_for":"#a","timeout_secs":-1}]}"##).is_err());
    }

    #[test]
    fn placeholders_are_checked_and_substituted() {
        assert!(Recipe::from_json(r##"{"name":"x","steps":[{"fill":{"selector":"#n","text":"{botname}"}}]}"##).is_err());
        assert!(Recipe::from_json(r##"{"name":"x","steps":[{"fill":{"selector":"#n","text":"a {} b {X}"}}]}"##).is_ok());
        assert_eq!(substitute("{bot_name} ({recording_id})", "Rec", "r1"), "Rec (r1)");
    }

    #[test]
    fn leave_steps_parse_like_join_steps_and_default_to_none() {
        assert!(Recipe::from_json(DESIGN_EXAMPLE).unwrap().leave.is_empty());
        let r = Recipe::from_json(r##"{"name":"x","leave":[{"click":"#leave"},{"wait_for":".left","timeout_secs":3}]}"##).unwrap();
        assert_eq!(r.leave[0], Step::Click { selector: "#leave".into(), timeout_secs: None });
        assert_eq!(r.leave[1].timeout_secs(), 3);
        let places: Vec<String> = r.selectors().into_iter().map(|(p, _)| p).collect();
        assert_eq!(places, ["leave[0].click", "leave[1].wait_for"]);
    }

    #[test]
    fn selectors_lists_every_place() {
        let r = Recipe::from_json(DESIGN_EXAMPLE).unwrap();
        let places: Vec<String> = r.selectors().into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            places,
            ["steps[0].fill", "steps[1].click", "steps[2].wait_for", "waiting_room_when", "ended_when", "hide_selectors[0]"]
        );
    }
}
