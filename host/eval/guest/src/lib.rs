//! The evaluator component: `warden_eval`'s renderers behind the
//! `warden:evaluator` world. A failed allocation here (past the instance's
//! memory limit) aborts this instance, which the host reports as the render
//! needing more memory than it may have.

wit_bindgen::generate!({ path: "wit", world: "evaluator" });

use serde_json::Value;
use warden_eval::render::{self as eval, Language as L};

struct Evaluator;

fn language_of(l: Language) -> L {
    match l {
        Language::Jinja => L::Jinja,
        Language::Liquid => L::Liquid,
        Language::Formulas => L::Formulas,
    }
}

fn parse(what: &str, text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("the evaluator got {what} that is not JSON: {e}"))
}

impl Guest for Evaluator {
    fn render(language: Language, value: String, context: String) -> Result<String, String> {
        let language = language_of(language);
        let value = parse("a value", &value)?;
        let context = parse("a context", &context)?;
        let out = eval::render(language, &value, &context)?;
        Ok(out.to_string())
    }

    fn render_each(language: Language, value: String, context: String, items: String) -> Result<String, String> {
        let value = parse("a value", &value)?;
        let context = parse("a context", &context)?;
        let items = match parse("items", &items)? {
            Value::Array(items) => items,
            _ => return Err("the evaluator's items must be a list".into()),
        };
        let out = eval::render_each(language_of(language), &value, &context, &items)?;
        Ok(Value::Array(out).to_string())
    }
}

export!(Evaluator);
