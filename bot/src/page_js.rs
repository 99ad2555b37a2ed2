//! The JavaScript the bot evaluates in the meeting page, built by pure functions so that the
//! exact text is unit-tested.
//!
//! Every probe carries its own helpers (pages reload between join attempts and lose anything
//! installed before). A selector condition holds only while a matching element is *visible*:
//! connected, laid out with a non-empty box, and not hidden by `display`, `visibility` or
//! `opacity`. Real pages keep hidden elements in the DOM long before they show them.

use serde::Deserialize;

/// The helpers every probe starts with.
const HELPERS: &str = r#"
const visible = (el) => {
  if (!el || !el.isConnected) return false;
  if (el.checkVisibility && !el.checkVisibility({opacityProperty: true, visibilityProperty: true})) return false;
  const r = el.getBoundingClientRect();
  return r.width > 0 && r.height > 0;
};
const first = (sel) => {
  for (const el of document.querySelectorAll(sel)) { if (visible(el)) return el; }
  return null;
};
const shown = (sel) => sel !== null && first(sel) !== null;
const point = (sel) => {
  const el = first(sel);
  if (!el || el.disabled || el.getAttribute('aria-disabled') === 'true') return null;
  let r = el.getBoundingClientRect();
  if (r.top < 0 || r.left < 0 || r.bottom > innerHeight || r.right > innerWidth) {
    el.scrollIntoView({block: 'center', inline: 'center'});
    r = el.getBoundingClientRect();
  }
  const x = r.left + r.width / 2, y = r.top + r.height / 2;
  const hit = document.elementFromPoint(x, y);
  if (!hit || !(hit === el || el.contains(hit) || hit.contains(el))) return null;
  return {x, y};
};
"#;

/// What a probe looks for besides the standing conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Nothing: only the standing conditions.
    None,
    /// A visible element matching the selector.
    Visible(&'a str),
    /// The centre of a visible, enabled, uncovered element, to click at.
    Clickable(&'a str),
}

/// The answer of one probe.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Probe {
    /// `true`/`false` for `Visible`, `{x, y}` or `null` for `Clickable`, `null` for `None`.
    pub target: serde_json::Value,
    pub waiting: bool,
    pub ended: bool,
    /// The page logged `RECFLEET_END`.
    pub end_requested: bool,
    /// The browser's own error page replaced the meeting (a load the egress proxy refused, or
    /// a network failure).
    #[serde(default)]
    pub error_page: bool,
}

impl Probe {
    pub fn target_found(&self) -> bool {
        match &self.target {
            serde_json::Value::Bool(b) => *b,
            serde_json::Value::Object(_) => true,
            _ => false,
        }
    }

    pub fn click_point(&self) -> Option<(f64, f64)> {
        Some((self.target.get("x")?.as_f64()?, self.target.get("y")?.as_f64()?))
    }
}

fn js_str(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_string(), |s| serde_json::to_string(s).expect("a string serializes"))
}

/// Pure: one probe of the page. Evaluates to a `Probe` as JSON.
pub fn probe(target: Target<'_>, waiting_room_when: Option<&str>, ended_when: Option<&str>) -> String {
    let target_expr = match target {
        Target::None => "null".to_string(),
        Target::Visible(sel) => format!("shown({})", js_str(Some(sel))),
        Target::Clickable(sel) => format!("point({})", js_str(Some(sel))),
    };
    format!(
        "(() => {{{HELPERS}\nreturn {{target: {target_expr}, waiting: shown({wr}), ended: shown({end}), \
         end_requested: !!(window.__recfleet && window.__recfleet.endRequested), \
         error_page: location.protocol === 'chrome-error:'}};\n}})()",
        wr = js_str(waiting_room_when),
        end = js_str(ended_when),
    )
}

/// Pure: selects the focused field's text, so typing replaces what was there.
pub const SELECT_FOCUSED_TEXT: &str = "(() => { const el = document.activeElement; if (el && el.select) el.select(); return !!el; })()";

/// Pure: the page's navigation result, to tell an error page from the meeting.
pub const NAVIGATION_STATUS: &str = "(() => { const n = performance.getEntriesByType('navigation')[0]; \
     return {status: n ? (n.responseStatus || 0) : 0, href: location.href}; })()";

#[derive(Debug, Clone, Deserialize)]
pub struct NavigationStatus {
    pub status: u16,
    pub href: String,
}

/// Pure: evaluates to the list of `[place, message]` for selectors the browser cannot parse.
pub fn compile_selectors(selectors: &[(String, &str)]) -> String {
    let list = serde_json::to_string(&selectors.iter().map(|(p, s)| [p.as_str(), s]).collect::<Vec<_>>()).expect("strings serialize");
    format!(
        "(() => {{ const bad = []; for (const [place, sel] of {list}) {{ \
           try {{ document.createDocumentFragment().querySelector(sel); }} catch (e) {{ bad.push([place, String(e.message)]); }} \
         }} return bad; }})()"
    )
}

/// Pure: installed in every document before the page's own scripts. It hides the recipe's
/// elements with a stylesheet and notes a `RECFLEET_END` log line, the page's way of asking
/// the recorder to finish.
pub fn init_script(hide_selectors: &[String]) -> String {
    let css: String = hide_selectors.iter().map(|s| format!("{s} {{ visibility: hidden !important; }}\n")).collect();
    format!(
        r#"(() => {{
  const state = window.__recfleet = {{endRequested: false}};
  for (const level of ['log', 'info', 'warn', 'error', 'debug']) {{
    const orig = console[level];
    console[level] = function (...args) {{
      try {{ if (args.some((a) => typeof a === 'string' && a.includes('RECFLEET_END'))) state.endRequested = true; }} catch (e) {{}}
      return orig.apply(this, args);
    }};
  }}
  const css = {css};
  if (!css) return;
  const add = () => {{
    if (document.getElementById('__recfleet_hide')) return;
    const style = document.createElement('style');
    style.id = '__recfleet_hide';
    style.textContent = css;
    (document.head || document.documentElement).appendChild(style);
  }};
  if (document.documentElement) add();
  document.addEventListener('DOMContentLoaded', add);
}})();"#,
        css = serde_json::to_string(&css).expect("a string serializes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_embedded_as_json_strings() {
        let js = probe(Target::Clickable(r#"button[title="Join \"now\""]"#), Some(".lobby"), None);
        assert!(js.contains(r#"point("button[title=\"Join \\\"now\\\"\"]")"#), "{js}");
        assert!(js.contains(r#"waiting: shown(".lobby")"#));
        assert!(js.contains("ended: shown(null)"));
    }

    #[test]
    fn visibility_checks_box_and_style() {
        let js = probe(Target::Visible("#a"), None, None);
        assert!(js.contains("checkVisibility"));
        assert!(js.contains("r.width > 0 && r.height > 0"));
        assert!(js.contains(r##"target: shown("#a")"##));
    }

    #[test]
    fn probe_answers_parse() {
        let p: Probe = serde_json::from_str(r#"{"target":{"x":10.5,"y":20},"waiting":false,"ended":false,"end_requested":true}"#).unwrap();
        assert_eq!(p.click_point(), Some((10.5, 20.0)));
        assert!(p.target_found() && p.end_requested);
        let p: Probe = serde_json::from_str(r#"{"target":null,"waiting":true,"ended":false,"end_requested":false}"#).unwrap();
        assert!(!p.target_found());
    }

    #[test]
    fn init_script_hides_each_selector_on_its_own_rule() {
        let js = init_script(&[".self-view".into(), "#me".into()]);
        assert!(js.contains(r#".self-view { visibility: hidden !important; }\n#me {"#), "{js}");
        assert!(js.contains("RECFLEET_END"));
    }
}
