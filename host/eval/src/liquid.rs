//! Tines' Liquid: the `liquid` crate's standard library plus the filters
//! Tines adds (`as_object`, `json_parse`, `jsonpath`, `get`, `base64_*`,
//! `hmac_sha1`, `to_json`), and the spellings Tines allows that Liquid does
//! not (`{{ .agent.body }}` with a leading dot, `{% global_resource x %}`,
//! `{% story_run_guid %}`, `{% line_break %}`).
//!
//! Rendering an option gives a string, as in Tines — except a string that is
//! exactly one `{{ … | as_object }}` output, which gives that value (an
//! object, list, number…): how Tines passes structured data between agents.
//!
//! Credentials are not here on purpose: `{% credential x %}` and
//! `CREDENTIAL.x` are taken out of an export by the importer and injected by
//! the host at egress, so a template that still names one fails to render.

use liquid_core::parser::Language;
#[cfg(feature = "evaluate")]
use liquid_core::runtime::Renderable;
use liquid_core::runtime::Template;
use liquid_core::{
    Display_filter, Expression, Filter, FilterParameters, FilterReflection, FromFilterParameters, ParseFilter, Result as LResult, Runtime, Value as LValue,
    ValueView,
};
use regex::Regex;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Longest template source rendered (a guard on what an export or an event can make us parse).
pub const MAX_TEMPLATE_BYTES: usize = 256 * 1024;
/// Longest rendered text.
pub const MAX_RENDERED_BYTES: usize = 4 * 1024 * 1024;

/// A Liquid renderer with Tines' filters; parsed templates are kept per source.
pub struct Liquid {
    language: Language,
    cache: Mutex<HashMap<String, Arc<Template>>>,
}

/// Distinct sources kept parsed (an import has a few hundred at most).
const CACHE: usize = 4096;

impl Default for Liquid {
    fn default() -> Self {
        Liquid::new()
    }
}

/// Registers Liquid's standard tags, blocks and filters (what
/// `liquid::ParserBuilder::stdlib` does) and Tines' filters.
fn language() -> Language {
    use liquid_lib::stdlib as s;
    let mut l = Language::empty();
    macro_rules! tags { ($($t:expr),*) => { $( { let t: Box<dyn liquid_core::parser::ParseTag> = Box::new($t); l.tags.register(t.reflection().tag().to_owned(), t); } )* } }
    macro_rules! blocks { ($($b:expr),*) => { $( { let b: Box<dyn liquid_core::parser::ParseBlock> = Box::new($b); l.blocks.register(b.reflection().start_tag().to_owned(), b); } )* } }
    macro_rules! filters { ($($f:expr),*) => { $( { let f: Box<dyn liquid_core::parser::ParseFilter> = Box::new($f); l.filters.register(f.reflection().name().to_owned(), f); } )* } }
    tags!(s::AssignTag, s::BreakTag, s::ContinueTag, s::CycleTag, s::IncrementTag, s::DecrementTag);
    blocks!(s::RawBlock, s::IfBlock, s::UnlessBlock, s::IfChangedBlock, s::ForBlock, s::TableRowBlock, s::CommentBlock, s::CaptureBlock, s::CaseBlock);
    filters!(
        s::Abs,
        s::Append,
        s::AtLeast,
        s::AtMost,
        s::Capitalize,
        s::Ceil,
        s::Compact,
        s::Concat,
        s::Date,
        s::Default,
        s::DividedBy,
        s::Downcase,
        s::Escape,
        s::EscapeOnce,
        s::First,
        s::Floor,
        s::Join,
        s::Last,
        s::Lstrip,
        s::Map,
        s::Minus,
        s::Modulo,
        s::NewlineToBr,
        s::Plus,
        s::Prepend,
        s::Remove,
        s::RemoveFirst,
        s::Replace,
        s::ReplaceFirst,
        s::Reverse,
        s::Round,
        s::Rstrip,
        s::Size,
        s::Slice,
        s::Sort,
        s::SortNatural,
        s::Split,
        s::Strip,
        s::StripHtml,
        s::StripNewlines,
        s::Times,
        s::Truncate,
        s::TruncateWords,
        s::Uniq,
        s::Upcase,
        s::UrlDecode,
        s::UrlEncode,
        s::Where
    );
    filters!(AsObject, ToJson, JsonParse, JsonPath, Get, Base64Encode, Base64Decode, HmacSha1);
    l
}

/// Tines renders a reference to something absent as nothing; the `liquid`
/// crate refuses it. This runtime answers nil where the one it wraps has no
/// such variable (so `{{ .a.missing | default: 1 }}` gives 1).
///
/// It also meters the work: every element rendered and every loop pass asks
/// for the registers, so past [`MAX_STEPS`] it raises a `break` there, which
/// ends every loop and block at once, and the render fails saying why — a
/// template from an export cannot make the host spin.
struct Lenient<R> {
    inner: R,
    steps: std::cell::Cell<usize>,
}

/// Rendering steps (elements, loop passes) one render may take.
pub const MAX_STEPS: usize = 1_000_000;
/// The widest `(a..b)` a `for` may count over (the crate builds the whole list first).
pub const MAX_RANGE: i64 = 10_000;

impl<R: Runtime> Runtime for Lenient<R> {
    fn partials(&self) -> &dyn liquid_core::runtime::PartialStore {
        self.inner.partials()
    }
    fn name(&self) -> Option<liquid_core::model::KStringRef<'_>> {
        self.inner.name()
    }
    fn roots(&self) -> std::collections::BTreeSet<liquid_core::model::KStringCow<'_>> {
        self.inner.roots()
    }
    fn try_get(&self, path: &[liquid_core::model::ScalarCow<'_>]) -> Option<liquid_core::model::ValueCow<'_>> {
        self.inner.try_get(path)
    }
    fn get(&self, path: &[liquid_core::model::ScalarCow<'_>]) -> LResult<liquid_core::model::ValueCow<'_>> {
        Ok(self.inner.try_get(path).unwrap_or(liquid_core::model::ValueCow::Owned(LValue::Nil)))
    }
    fn set_global(&self, name: liquid_core::model::KString, val: LValue) -> Option<LValue> {
        self.inner.set_global(name, val)
    }
    fn set_index(&self, name: liquid_core::model::KString, val: LValue) -> Option<LValue> {
        self.inner.set_index(name, val)
    }
    fn get_index<'a>(&'a self, name: &str) -> Option<liquid_core::model::ValueCow<'a>> {
        self.inner.get_index(name)
    }
    fn registers(&self) -> &liquid_core::runtime::Registers {
        let steps = self.steps.get() + 1;
        self.steps.set(steps);
        let registers = self.inner.registers();
        if steps > MAX_STEPS {
            registers.get_mut::<liquid_core::runtime::InterruptRegister>().set(liquid_core::runtime::Interrupt::Break);
        }
        registers
    }
}

/// Output that refuses to grow past [`MAX_RENDERED_BYTES`].
struct Capped(Vec<u8>, bool);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_RENDERED_BYTES {
            self.1 = true;
            return Err(std::io::Error::other(format!("rendered text passed {MAX_RENDERED_BYTES} bytes")));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Integer literals in tags and outputs fit in 64 bits (the crate's parser
/// asserts that they do).
fn check_numbers(text: &str) -> Result<(), String> {
    static DELIM: OnceLock<Regex> = OnceLock::new();
    static LONG: OnceLock<Regex> = OnceLock::new();
    let delim = DELIM.get_or_init(|| Regex::new(r"(?s)\{\{.*?\}\}|\{%.*?%\}").unwrap());
    let long = LONG.get_or_init(|| Regex::new(r"\d{19,}").unwrap());
    match delim.find_iter(text).find_map(|m| long.find(m.as_str())) {
        Some(n) => Err(format!("number `{}…` in a template is longer than 18 digits", &n.as_str()[..18])),
        None => Ok(()),
    }
}

/// Every `for … in (a..b)` counts over two numbers at most [`MAX_RANGE`] apart.
fn check_ranges(text: &str) -> Result<(), String> {
    static R: OnceLock<Regex> = OnceLock::new();
    let r = R.get_or_init(|| Regex::new(r"\{%-?\s*(?:for|tablerow)\s+\w+\s+in\s+\(([^)]*)\)").unwrap());
    for c in r.captures_iter(text) {
        let bounds: Vec<Option<i64>> = c[1].split("..").map(|b| b.trim().parse::<i64>().ok()).collect();
        match bounds.as_slice() {
            [Some(a), Some(b)] if (b - a).abs() <= MAX_RANGE => {}
            _ => return Err(format!("`for … in ({})` must count between two numbers at most {MAX_RANGE} apart", c[1].trim())),
        }
    }
    Ok(())
}

impl Liquid {
    pub fn new() -> Liquid {
        Liquid { language: language(), cache: Mutex::default() }
    }

    /// Parses `text` (after [`normalize`]), reporting Liquid's error.
    pub fn check(&self, text: &str) -> Result<(), String> {
        self.template(text).map(|_| ())
    }

    fn template(&self, text: &str) -> Result<Arc<Template>, String> {
        if text.len() > MAX_TEMPLATE_BYTES {
            return Err(format!("template is {} bytes; at most {MAX_TEMPLATE_BYTES}", text.len()));
        }
        if let Some(t) = self.cache.lock().unwrap().get(text) {
            return Ok(t.clone());
        }
        let normalized = normalize(text);
        check_ranges(&normalized)?;
        check_numbers(&normalized)?;
        // The crate's parser has asserted on inputs it should have refused; a
        // template from an export must never take the host down with it.
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| liquid_core::parser::parse(&normalized, &self.language)))
            .map_err(|_| "the template could not be parsed (the Liquid parser failed on it)".to_string())?;
        let elements = parsed.map_err(|e| one_line(&e.to_string()))?;
        let t = Arc::new(Template::new(elements));
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= CACHE {
            cache.clear();
        }
        cache.insert(text.to_string(), t.clone());
        Ok(t)
    }

    #[cfg(feature = "evaluate")]
    /// Renders one string against `globals`. Text without `{{`/`{%` is
    /// returned as it is; `{{ x | as_object }}` alone gives x's value.
    pub fn render_str(&self, text: &str, globals: &liquid_core::Object) -> Result<Value, String> {
        if !text.contains("{{") && !text.contains("{%") {
            return Ok(Value::String(text.to_string()));
        }
        let template = self.template(text)?;
        let runtime = Lenient { inner: liquid_core::runtime::RuntimeBuilder::new().set_globals(globals).build(), steps: Default::default() };
        let mut out = Capped(Vec::new(), false);
        let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| template.render_to(&mut out, &runtime)))
            .map_err(|_| "the template could not be rendered (the Liquid renderer failed on it)".to_string())?;
        if out.1 {
            return Err(format!("the rendered text passed {MAX_RENDERED_BYTES} bytes; stopped"));
        }
        rendered.map_err(|e| one_line(&e.to_string()))?;
        if runtime.steps.get() > MAX_STEPS {
            return Err(format!("the template took more than {MAX_STEPS} rendering steps (loops within loops?); stopped"));
        }
        Ok(unmark(&String::from_utf8_lossy(&out.0)))
    }

    #[cfg(feature = "evaluate")]
    /// Renders every string inside `v` (object keys stay as they are).
    pub fn render_value(&self, v: &Value, globals: &liquid_core::Object) -> Result<Value, String> {
        Ok(match v {
            Value::String(s) => self.render_str(s, globals)?,
            Value::Array(a) => Value::Array(a.iter().map(|x| self.render_value(x, globals)).collect::<Result<_, _>>()?),
            Value::Object(o) => {
                let mut out = Map::new();
                for (k, x) in o {
                    out.insert(k.clone(), self.render_value(x, globals)?);
                }
                Value::Object(out)
            }
            other => other.clone(),
        })
    }
}

/// A JSON object as Liquid globals.
pub fn globals(ctx: &Map<String, Value>) -> liquid_core::Object {
    let mut o = liquid_core::Object::new();
    for (k, v) in ctx {
        o.insert(k.clone().into(), to_liquid(v));
    }
    o
}

/// A JSON value as a Liquid value.
pub fn to_liquid(v: &Value) -> LValue {
    match v {
        Value::Null => LValue::Nil,
        Value::Bool(b) => LValue::scalar(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => LValue::scalar(i),
            None => LValue::scalar(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => LValue::scalar(s.clone()),
        Value::Array(a) => LValue::Array(a.iter().map(to_liquid).collect()),
        Value::Object(o) => {
            let mut out = liquid_core::Object::new();
            for (k, x) in o {
                out.insert(k.clone().into(), to_liquid(x));
            }
            LValue::Object(out)
        }
    }
}

/// A Liquid value as JSON (dates as their text).
pub fn to_json(v: &dyn ValueView) -> Value {
    if let Some(s) = v.as_scalar() {
        return match v.type_name() {
            "whole number" => s.to_integer().map(Value::from).unwrap_or(Value::Null),
            "fractional number" => s.to_float().and_then(serde_json::Number::from_f64).map(Value::Number).unwrap_or(Value::Null),
            "boolean" => Value::Bool(s.to_bool().unwrap_or(false)),
            _ => Value::String(s.to_kstr().into_string()),
        };
    }
    if let Some(a) = v.as_array() {
        return Value::Array(a.values().map(to_json).collect());
    }
    if let Some(o) = v.as_object() {
        let mut out = Map::new();
        for (k, x) in o.iter() {
            out.insert(k.to_string(), to_json(x));
        }
        return Value::Object(out);
    }
    Value::Null
}

/// Liquid's errors come over several lines; one line for a report.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Tines' spellings as plain Liquid: the leading dot of an agent reference
/// (`{{ .agent.body }}`, `{% if .a.b %}`) and Tines' own simple tags.
pub fn normalize(text: &str) -> String {
    static DOT: OnceLock<Regex> = OnceLock::new();
    static TAG: OnceLock<Regex> = OnceLock::new();
    static DELIM: OnceLock<Regex> = OnceLock::new();
    let tag = TAG.get_or_init(|| Regex::new(r"\{%-?\s*(global_resource|story_run_guid|story_run_link|line_break)\b\s*([A-Za-z0-9_]*)\s*-?%\}").unwrap());
    let text = tag.replace_all(text, |c: &regex::Captures| match &c[1] {
        "global_resource" => format!("{{{{ RESOURCE.{} }}}}", &c[2]),
        "story_run_guid" => "{{ META.story_run_guid }}".to_string(),
        "story_run_link" => "{{ META.story_run_link }}".to_string(),
        _ => "\n".to_string(),
    });
    let delim = DELIM.get_or_init(|| Regex::new(r"(?s)\{\{.*?\}\}|\{%.*?%\}").unwrap());
    let dot = DOT.get_or_init(|| Regex::new(r#"(^|[\s(\[,:=<>!|{%])\.([A-Za-z_])"#).unwrap());
    delim.replace_all(&text, |c: &regex::Captures| dot.replace_all(&c[0], "$1$2").into_owned()).into_owned()
}

/// The marker `as_object` wraps its JSON in: random per process, so event
/// data cannot forge one.
fn marker() -> &'static str {
    static M: OnceLock<String> = OnceLock::new();
    M.get_or_init(|| {
        let mut b = [0u8; 12];
        getrandom::fill(&mut b).expect("the OS gives random bytes");
        format!("\u{1}as_object:{}:", hex::encode(b))
    })
}

/// A rendered text whose whole is one `as_object` output becomes its value;
/// `as_object` outputs inside longer text become their JSON.
fn unmark(out: &str) -> Value {
    let m = marker();
    if !out.contains(m) {
        return Value::String(out.to_string());
    }
    let end = '\u{2}';
    if let Some(rest) = out.strip_prefix(m) {
        if let Some(json) = rest.strip_suffix(end) {
            if !json.contains(m) {
                if let Ok(v) = serde_json::from_str(json) {
                    return v;
                }
            }
        }
    }
    Value::String(out.replace(m, "").replace(end, ""))
}

fn invalid(msg: impl Into<String>) -> liquid_core::Error {
    liquid_core::Error::with_msg(msg.into())
}

#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(name = "as_object", description = "Passes the value on as structured data, not text.", parsed(AsObjectFilter))]
pub struct AsObject;

#[derive(Debug, Default, Display_filter)]
#[name = "as_object"]
struct AsObjectFilter;

impl Filter for AsObjectFilter {
    fn evaluate(&self, input: &dyn ValueView, _runtime: &dyn Runtime) -> LResult<LValue> {
        // A string holding JSON is parsed (Tines: `{{ x | json_parse | as_object }}` or just as_object).
        let v = match input.as_scalar().map(|s| s.to_kstr().into_string()) {
            Some(s) if input.type_name() == "string" => serde_json::from_str::<Value>(&s).unwrap_or(Value::String(s)),
            _ => to_json(input),
        };
        Ok(LValue::scalar(format!("{}{}\u{2}", marker(), v)))
    }
}

#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(name = "to_json", description = "The value as JSON text.", parsed(ToJsonFilter))]
pub struct ToJson;

#[derive(Debug, Default, Display_filter)]
#[name = "to_json"]
struct ToJsonFilter;

impl Filter for ToJsonFilter {
    fn evaluate(&self, input: &dyn ValueView, _runtime: &dyn Runtime) -> LResult<LValue> {
        Ok(LValue::scalar(to_json(input).to_string()))
    }
}

#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(name = "json_parse", description = "Parses JSON text.", parsed(JsonParseFilter))]
pub struct JsonParse;

#[derive(Debug, Default, Display_filter)]
#[name = "json_parse"]
struct JsonParseFilter;

impl Filter for JsonParseFilter {
    fn evaluate(&self, input: &dyn ValueView, _runtime: &dyn Runtime) -> LResult<LValue> {
        let text = input.to_kstr();
        let v: Value = serde_json::from_str(text.as_str()).map_err(|e| invalid(format!("json_parse: not JSON ({e})")))?;
        Ok(to_liquid(&v))
    }
}

#[derive(Debug, FilterParameters)]
struct PathArgs {
    #[parameter(description = "The path.", arg_type = "str")]
    path: Expression,
}

#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(name = "jsonpath", description = "Selects with a JSONPath ($.a.b[0], [*], ..).", parameters(PathArgs), parsed(JsonPathFilter))]
pub struct JsonPath;

#[derive(Debug, FromFilterParameters, Display_filter)]
#[name = "jsonpath"]
struct JsonPathFilter {
    #[parameters]
    args: PathArgs,
}

impl Filter for JsonPathFilter {
    fn evaluate(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> LResult<LValue> {
        let args = self.args.evaluate(runtime)?;
        let found = jsonpath(&to_json(input), &args.path).map_err(invalid)?;
        Ok(to_liquid(&found))
    }
}

#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(name = "get", description = "The value at a key or dotted path.", parameters(PathArgs), parsed(GetFilter))]
pub struct Get;

#[derive(Debug, FromFilterParameters, Display_filter)]
#[name = "get"]
struct GetFilter {
    #[parameters]
    args: PathArgs,
}

impl Filter for GetFilter {
    fn evaluate(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> LResult<LValue> {
        let args = self.args.evaluate(runtime)?;
        let v = to_json(input);
        Ok(to_liquid(dotted(&v, &args.path).unwrap_or(&Value::Null)))
    }
}

#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(name = "base64_encode", description = "Base64 of the text.", parsed(Base64EncodeFilter))]
pub struct Base64Encode;

#[derive(Debug, Default, Display_filter)]
#[name = "base64_encode"]
struct Base64EncodeFilter;

impl Filter for Base64EncodeFilter {
    fn evaluate(&self, input: &dyn ValueView, _runtime: &dyn Runtime) -> LResult<LValue> {
        use base64::Engine;
        Ok(LValue::scalar(base64::engine::general_purpose::STANDARD.encode(input.to_kstr().as_bytes())))
    }
}

#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(name = "base64_decode", description = "The text a base64 string holds.", parsed(Base64DecodeFilter))]
pub struct Base64Decode;

#[derive(Debug, Default, Display_filter)]
#[name = "base64_decode"]
struct Base64DecodeFilter;

impl Filter for Base64DecodeFilter {
    fn evaluate(&self, input: &dyn ValueView, _runtime: &dyn Runtime) -> LResult<LValue> {
        use base64::Engine;
        let text = input.to_kstr();
        let t = text.as_str().trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(t)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t.trim_end_matches('=')))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t.trim_end_matches('=')))
            .map_err(|e| invalid(format!("base64_decode: not base64 ({e})")))?;
        Ok(LValue::scalar(String::from_utf8_lossy(&bytes).into_owned()))
    }
}

#[derive(Debug, FilterParameters)]
struct KeyArgs {
    #[parameter(description = "The key.", arg_type = "str")]
    key: Expression,
}

#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(name = "hmac_sha1", description = "Hex HMAC-SHA1 of the text under a key.", parameters(KeyArgs), parsed(HmacSha1Filter))]
pub struct HmacSha1;

#[derive(Debug, FromFilterParameters, Display_filter)]
#[name = "hmac_sha1"]
struct HmacSha1Filter {
    #[parameters]
    args: KeyArgs,
}

impl Filter for HmacSha1Filter {
    fn evaluate(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> LResult<LValue> {
        use hmac::{Mac, SimpleHmac};
        let args = self.args.evaluate(runtime)?;
        let mut mac = SimpleHmac::<sha1::Sha1>::new_from_slice(args.key.as_bytes()).map_err(|e| invalid(format!("hmac_sha1: {e}")))?;
        mac.update(input.to_kstr().as_bytes());
        Ok(LValue::scalar(hex::encode(mac.finalize().into_bytes())))
    }
}

/// `a.b.0.c` (or `.a.b`) in a JSON value.
pub use crate::lookup_ref as dotted;

/// The JSONPath subset exports use: `$`, `.key`, `['key']`, `[n]`, `[*]`,
/// `..key` (recursive). A path with a wildcard gives a list.
pub fn jsonpath(v: &Value, path: &str) -> Result<Value, String> {
    let p = path.trim();
    let p = p.strip_prefix('$').unwrap_or(p);
    let mut current: Vec<&Value> = vec![v];
    let mut many = false;
    let mut rest = p;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("..") {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            let mut found = Vec::new();
            for c in &current {
                descend(c, key, &mut found);
            }
            current = found;
            many = true;
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            current = step(&current, key, &mut many);
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or_else(|| format!("jsonpath `{path}`: `[` without `]`"))?;
            let inner = r[..end].trim();
            let key = inner.trim_matches(|c| c == '\'' || c == '"');
            current = step(&current, key, &mut many);
            rest = &r[end + 1..];
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            current = step(&current, &rest[..end], &mut many);
            rest = &rest[end..];
        }
    }
    Ok(if many { Value::Array(current.into_iter().cloned().collect()) } else { current.first().map(|v| (*v).clone()).unwrap_or(Value::Null) })
}

fn step<'v>(current: &[&'v Value], key: &str, many: &mut bool) -> Vec<&'v Value> {
    let mut out = Vec::new();
    for c in current {
        match (c, key) {
            (Value::Array(a), "*") => {
                *many = true;
                out.extend(a.iter());
            }
            (Value::Object(o), "*") => {
                *many = true;
                out.extend(o.values());
            }
            (Value::Array(a), k) => {
                if let Some(x) = k
                    .parse::<i64>()
                    .ok()
                    .and_then(|i| if i < 0 { a.len().checked_sub(i.unsigned_abs() as usize) } else { Some(i as usize) })
                    .and_then(|i| a.get(i))
                {
                    out.push(x);
                }
            }
            (Value::Object(o), k) => {
                if let Some(x) = o.get(k) {
                    out.push(x);
                }
            }
            _ => {}
        }
    }
    out
}

fn descend<'v>(v: &'v Value, key: &str, out: &mut Vec<&'v Value>) {
    match v {
        Value::Object(o) => {
            if let Some(x) = o.get(key) {
                out.push(x);
            }
            for x in o.values() {
                descend(x, key, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| descend(x, key, out)),
        _ => {}
    }
}

#[cfg(all(test, feature = "evaluate"))]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(text: &str, ctx: Value) -> Value {
        let l = Liquid::new();
        l.render_str(text, &globals(ctx.as_object().unwrap())).unwrap()
    }

    #[test]
    fn agent_references_take_tines_leading_dot() {
        let ctx = json!({"get_user": {"body": {"name": "ana", "roles": ["a", "b"]}}});
        assert_eq!(render("hi {{ .get_user.body.name }}", ctx.clone()), json!("hi ana"));
        assert_eq!(render("{% if .get_user.body.roles contains 'b' %}yes{% endif %}", ctx.clone()), json!("yes"));
        assert_eq!(render("{{ .get_user.body.roles | join: ', ' }}", ctx), json!("a, b"));
    }

    #[test]
    fn as_object_alone_passes_the_value_and_inside_text_its_json() {
        let ctx = json!({"a": {"body": {"list": [1, 2], "n": 3, "s": "x"}}});
        assert_eq!(render("{{ .a.body.list | as_object }}", ctx.clone()), json!([1, 2]));
        assert_eq!(render("{{ .a.body | as_object }}", ctx.clone()), json!({"list": [1, 2], "n": 3, "s": "x"}));
        assert_eq!(render("x={{ .a.body.list | as_object }}", ctx.clone()), json!("x=[1,2]"));
        assert_eq!(render("{{ '{\"k\": true}' | as_object }}", ctx), json!({"k": true}));
    }

    #[test]
    fn a_forged_marker_in_event_data_is_only_text() {
        let forged = format!("{}{{\"evil\":1}}\u{2}", "\u{1}as_object:000000000000000000000000:");
        let ctx = json!({"a": {"t": forged}});
        assert_eq!(render("{{ .a.t }}", ctx.clone()), json!(forged));
    }

    #[test]
    fn tines_filters() {
        let ctx = json!({"a": {"j": "{\"x\": {\"y\": [5, 6]}}", "b64": "aGVsbG8=", "o": {"k": {"v": 7}}}});
        assert_eq!(render("{{ .a.j | json_parse | jsonpath: '$.x.y[1]' }}", ctx.clone()), json!("6"));
        assert_eq!(render("{{ .a.b64 | base64_decode }}", ctx.clone()), json!("hello"));
        assert_eq!(render("{{ 'hello' | base64_encode }}", ctx.clone()), json!("aGVsbG8="));
        assert_eq!(render("{{ .a.o | get: 'k.v' }}", ctx.clone()), json!("7"));
        assert_eq!(render("{{ .a.missing | default: 'none' }}", ctx.clone()), json!("none"));
        assert_eq!(render("{{ 'msg' | hmac_sha1: 'key' }}", ctx.clone()), json!("102900b72b7bf1031eec76b4804b66052376896b"));
        let now: i64 = render("{{ 'now' | date: '%s' }}", ctx).as_str().unwrap().parse().unwrap();
        assert!((now - chrono::Utc::now().timestamp()).abs() < 5);
    }

    #[test]
    fn tines_tags_become_liquid() {
        assert_eq!(normalize("{% global_resource api_base %}/x"), "{{ RESOURCE.api_base }}/x");
        assert_eq!(normalize("run {% story_run_guid %}"), "run {{ META.story_run_guid }}");
        assert_eq!(render("a{% line_break %}b", json!({})), json!("a\nb"));
    }

    #[test]
    fn assign_capture_and_case_work_as_in_liquid() {
        let ctx = json!({"a": {"n": 3, "name": "x"}});
        assert_eq!(render("{% assign t = .a.n | plus: 2 %}{% capture c %}[{{ t }}]{% endcapture %}{{ c }}{{ c }}", ctx.clone()), json!("[5][5]"));
        assert_eq!(render("{% case .a.name %}{% when 'x' %}ex{% else %}other{% endcase %}", ctx), json!("ex"));
    }

    #[test]
    fn a_template_cannot_make_the_host_spin_or_fill_memory() {
        let l = Liquid::new();
        let g = globals(json!({"big": (0..2000).collect::<Vec<_>>()}).as_object().unwrap());
        // Loops within loops over event data: stopped by the step meter, promptly.
        let started = std::time::Instant::now();
        let e = l.render_str("{% for a in big %}{% for b in big %}{% for c in big %}.{% endfor %}{% endfor %}{% endfor %}", &g).unwrap_err();
        assert!(e.contains("rendering steps"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        // A counted range the crate would build in memory first: refused before rendering.
        let e = l.render_str("{% for i in (1..100000000000) %}x{% endfor %}", &g).unwrap_err();
        assert!(e.contains("at most 10000 apart"), "{e}");
        let e = l.render_str("{% for i in (1..big.size) %}x{% endfor %}", &g).unwrap_err();
        assert!(e.contains("two numbers"), "{e}");
        // A number the crate's parser would assert on: refused with a reason.
        let e = l.render_str("{{ 99999999999999999999 | plus: 1 }}", &g).unwrap_err();
        assert!(e.contains("longer than 18 digits"), "{e}");
        // Output past the cap: refused as it grows, not after.
        let e = l.render_str("{% for a in big %}{% for b in big %}0123456789{% endfor %}{% endfor %}", &g).unwrap_err();
        assert!(e.contains("bytes"), "{e}");
    }

    #[test]
    fn jsonpath_subset() {
        let v = json!({"a": [{"id": 1}, {"id": 2}], "b": {"c": {"id": 3}}});
        assert_eq!(jsonpath(&v, "$.a[*].id").unwrap(), json!([1, 2]));
        assert_eq!(jsonpath(&v, "$..id").unwrap(), json!([1, 2, 3]));
        assert_eq!(jsonpath(&v, "$.b.c").unwrap(), json!({"id": 3}));
        assert_eq!(jsonpath(&v, "$.a[-1].id").unwrap(), json!(2));
        assert_eq!(jsonpath(&v, "$['b']['c']['id']").unwrap(), json!(3));
    }
}
