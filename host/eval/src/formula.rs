//! Tines formulas (newer exports): a whole field `=expr`, or `<<expr>>`
//! inside text. Expressions read agents by name (`get_user.body.name`,
//! `alerts.body.items[0]`, `x["a key"]`), `INPUT`, `META`, `LOCAL`; have
//! literals (`"text"`, `12.5`, `TRUE`, `NULL`, `[1, 2]`, `{"k": v}`),
//! operators (`+ - * / %`, `&` joining text, `= == != <> < <= > >=`,
//! `&& ||`, `!`) and the common functions (IF, AND, OR, NOT, IS_EMPTY, TEXT,
//! SWITCH, FILTER, MAP, REJECT with LAMBDA, SIZE, …; see [`call`]).
//!
//! Parsed by a small Pratt parser into an [`Expr`] and evaluated over JSON.
//! Every size is capped: the source, the nesting, the work of one
//! evaluation (so a formula from an export cannot make the host loop).

use regex::Regex;
use serde_json::{json, Map, Number, Value};
use std::collections::HashMap;
use std::sync::OnceLock;

/// Longest formula source.
pub const MAX_SOURCE: usize = 64 * 1024;
/// Deepest nesting of an expression.
const MAX_DEPTH: usize = 64;
/// Evaluation steps one formula may take (each node visited, each list item a lambda sees).
const MAX_STEPS: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Literal(Value),
    /// A name, then keys / indexes.
    Path(String, Vec<Expr>),
    List(Vec<Expr>),
    Object(Vec<(String, Expr)>),
    Unary(char, Box<Expr>),
    Binary(Op, Box<Expr>, Box<Expr>),
    Call(String, Vec<Expr>),
    Lambda(Vec<String>, Box<Expr>),
    /// `expr.key` / `expr[i]` on a computed value.
    Index(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Concat,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    Sym(&'static str),
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let s: Vec<char> = src.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    const SYMS: &[&str] =
        &["==", "!=", "<>", "<=", ">=", "&&", "||", "=>", "+", "-", "*", "/", "%", "&", "=", "<", ">", "!", "(", ")", "[", "]", "{", "}", ",", ".", ":"];
    while i < s.len() {
        let c = s[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < s.len() && (s[i].is_ascii_digit() || s[i] == '.' && s.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
                i += 1;
            }
            let t: String = s[start..i].iter().collect();
            out.push(Tok::Num(t.parse().map_err(|_| format!("bad number `{t}`"))?));
        } else if c == '"' || c == '\'' {
            let q = c;
            i += 1;
            let mut t = String::new();
            loop {
                match s.get(i) {
                    None => return Err("a string is not closed".into()),
                    Some('\\') => {
                        match s.get(i + 1) {
                            Some('n') => t.push('\n'),
                            Some('t') => t.push('\t'),
                            Some(x) => t.push(*x),
                            None => return Err("a string ends in `\\`".into()),
                        }
                        i += 2;
                    }
                    Some(x) if *x == q => {
                        i += 1;
                        break;
                    }
                    Some(x) => {
                        t.push(*x);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(t));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < s.len() && (s[i].is_alphanumeric() || s[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(s[start..i].iter().collect()));
        } else {
            let rest: String = s[i..(i + 2).min(s.len())].iter().collect();
            let sym = SYMS.iter().find(|p| rest.starts_with(**p)).ok_or_else(|| format!("unexpected `{c}`"))?;
            i += sym.chars().count();
            out.push(Tok::Sym(sym));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn eat(&mut self, sym: &str) -> bool {
        if self.peek() == Some(&Tok::Sym(leak(sym))) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, sym: &str) -> Result<(), String> {
        if self.eat(sym) {
            Ok(())
        } else {
            Err(format!("expected `{sym}`{}", self.at()))
        }
    }
    fn at(&self) -> String {
        match self.peek() {
            None => " at the end".into(),
            Some(t) => format!(" before {}", show(t)),
        }
    }

    fn expr(&mut self, min: u8) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH}"));
        }
        let mut left = self.prefix()?;
        while let Some(Tok::Sym(s)) = self.peek().cloned() {
            let (op, prec) = match s {
                "||" => (Op::Or, 1),
                "&&" => (Op::And, 2),
                "=" | "==" => (Op::Eq, 3),
                "!=" | "<>" => (Op::Ne, 3),
                "<" => (Op::Lt, 4),
                "<=" => (Op::Le, 4),
                ">" => (Op::Gt, 4),
                ">=" => (Op::Ge, 4),
                "&" => (Op::Concat, 5),
                "+" => (Op::Add, 6),
                "-" => (Op::Sub, 6),
                "*" => (Op::Mul, 7),
                "/" => (Op::Div, 7),
                "%" => (Op::Rem, 7),
                _ => break,
            };
            if prec < min {
                break;
            }
            self.pos += 1;
            let right = self.expr(prec + 1)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn prefix(&mut self) -> Result<Expr, String> {
        let t = self.peek().cloned().ok_or_else(|| "the formula ends too early".to_string())?;
        self.pos += 1;
        let base = match t {
            Tok::Num(n) => Expr::Literal(num(n)),
            Tok::Str(s) => Expr::Literal(Value::String(s)),
            Tok::Sym("-") => return Ok(Expr::Unary('-', Box::new(self.expr(8)?))),
            Tok::Sym("!") => return Ok(Expr::Unary('!', Box::new(self.expr(8)?))),
            Tok::Sym("(") => {
                let e = self.expr(0)?;
                self.expect(")")?;
                e
            }
            Tok::Sym("[") => {
                let mut items = Vec::new();
                if !self.eat("]") {
                    loop {
                        items.push(self.expr(0)?);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Expr::List(items)
            }
            Tok::Sym("{") => {
                let mut fields = Vec::new();
                if !self.eat("}") {
                    loop {
                        let key = match self.peek().cloned() {
                            Some(Tok::Str(s)) | Some(Tok::Ident(s)) => s,
                            _ => return Err(format!("an object key must be text{}", self.at())),
                        };
                        self.pos += 1;
                        self.expect(":")?;
                        fields.push((key, self.expr(0)?));
                        if self.eat("}") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Expr::Object(fields)
            }
            Tok::Ident(name) => {
                let upper = name.to_ascii_uppercase();
                match upper.as_str() {
                    "TRUE" => Expr::Literal(Value::Bool(true)),
                    "FALSE" => Expr::Literal(Value::Bool(false)),
                    "NULL" | "NIL" => Expr::Literal(Value::Null),
                    _ if self.peek() == Some(&Tok::Sym("(")) => {
                        self.pos += 1;
                        let mut args = Vec::new();
                        if !self.eat(")") {
                            loop {
                                args.push(self.expr(0)?);
                                if self.eat(")") {
                                    break;
                                }
                                self.expect(",")?;
                            }
                        }
                        if upper == "LAMBDA" {
                            let body = args.pop().ok_or("LAMBDA needs a body")?;
                            let params = args
                                .into_iter()
                                .map(|a| match a {
                                    Expr::Path(n, rest) if rest.is_empty() => Ok(n),
                                    other => Err(format!("LAMBDA's parameters are names, not {other:?}")),
                                })
                                .collect::<Result<_, String>>()?;
                            Expr::Lambda(params, Box::new(body))
                        } else {
                            Expr::Call(upper, args)
                        }
                    }
                    _ => Expr::Path(name, Vec::new()),
                }
            }
            other => return Err(format!("unexpected {}", show(&other))),
        };
        self.postfix(base)
    }

    fn postfix(&mut self, mut e: Expr) -> Result<Expr, String> {
        loop {
            let key = if self.eat(".") {
                match self.peek().cloned() {
                    Some(Tok::Ident(k)) => {
                        self.pos += 1;
                        Expr::Literal(Value::String(k))
                    }
                    Some(Tok::Num(n)) => {
                        self.pos += 1;
                        Expr::Literal(num(n))
                    }
                    _ => return Err(format!("expected a key after `.`{}", self.at())),
                }
            } else if self.eat("[") {
                let k = self.expr(0)?;
                self.expect("]")?;
                k
            } else {
                return Ok(e);
            };
            e = match e {
                Expr::Path(n, mut rest) => {
                    rest.push(key);
                    Expr::Path(n, rest)
                }
                other => Expr::Index(Box::new(other), Box::new(key)),
            };
        }
    }
}

fn leak(s: &str) -> &'static str {
    // Only the fixed symbol table is ever compared: map to its static entry.
    const SYMS: &[&str] =
        &["==", "!=", "<>", "<=", ">=", "&&", "||", "=>", "+", "-", "*", "/", "%", "&", "=", "<", ">", "!", "(", ")", "[", "]", "{", "}", ",", ".", ":"];
    SYMS.iter().find(|x| **x == s).copied().unwrap_or("")
}

fn show(t: &Tok) -> String {
    match t {
        Tok::Num(n) => n.to_string(),
        Tok::Str(s) => format!("\"{s}\""),
        Tok::Ident(i) => i.clone(),
        Tok::Sym(s) => format!("`{s}`"),
    }
}

fn num(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        Number::from_f64(n).map(Value::Number).unwrap_or(Value::Null)
    }
}

/// Parses one formula (without its leading `=`).
pub fn parse(src: &str) -> Result<Expr, String> {
    if src.len() > MAX_SOURCE {
        return Err(format!("formula is {} bytes; at most {MAX_SOURCE}", src.len()));
    }
    let mut p = Parser { toks: lex(src)?, pos: 0, depth: 0 };
    let e = p.expr(0)?;
    if p.pos < p.toks.len() {
        return Err(format!("unexpected {} after the formula", show(&p.toks[p.pos])));
    }
    Ok(e)
}

/// Names the evaluation sees: agents' payloads by name, `INPUT`, `META`…
pub struct Scope<'a> {
    pub ctx: &'a Map<String, Value>,
    locals: Vec<HashMap<String, Value>>,
    steps: usize,
}

impl<'a> Scope<'a> {
    pub fn new(ctx: &'a Map<String, Value>) -> Scope<'a> {
        Scope { ctx, locals: Vec::new(), steps: 0 }
    }

    fn name(&self, n: &str) -> Value {
        for frame in self.locals.iter().rev() {
            if let Some(v) = frame.get(n) {
                return v.clone();
            }
        }
        self.ctx.get(n).cloned().unwrap_or(Value::Null)
    }
}

/// Longest text or list one formula value may be.
const MAX_VALUE: usize = 4 * 1024 * 1024;

/// Evaluates `e`. A missing key is null, as in Tines; a wrong type is an error.
/// Each value made costs steps by its size, and none may pass [`MAX_VALUE`]:
/// a formula cannot make the host loop or fill its memory.
pub(crate) fn eval(e: &Expr, sc: &mut Scope) -> Result<Value, String> {
    sc.steps += 1;
    if sc.steps > MAX_STEPS {
        return Err(format!("the formula took more than {MAX_STEPS} steps"));
    }
    let v = eval_once(e, sc)?;
    // Shallow, plus the texts one level down (what MAP and friends build).
    let text_len = |x: &Value| if let Value::String(s) = x { s.len() } else { 0 };
    let size = match &v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.len() + a.iter().map(text_len).sum::<usize>(),
        Value::Object(o) => o.len() + o.values().map(text_len).sum::<usize>(),
        _ => 0,
    };
    if size > MAX_VALUE {
        return Err(format!("the formula made a value of {size} characters or items; at most {MAX_VALUE}"));
    }
    sc.steps += size / 64;
    if sc.steps > MAX_STEPS {
        return Err(format!("the formula took more than {MAX_STEPS} steps"));
    }
    Ok(v)
}

fn eval_once(e: &Expr, sc: &mut Scope) -> Result<Value, String> {
    Ok(match e {
        Expr::Literal(v) => v.clone(),
        Expr::Path(name, keys) => {
            let mut v = sc.name(name);
            for k in keys {
                let k = eval(k, sc)?;
                v = index(&v, &k);
            }
            v
        }
        Expr::Index(base, k) => {
            let b = eval(base, sc)?;
            let k = eval(k, sc)?;
            index(&b, &k)
        }
        Expr::List(items) => Value::Array(items.iter().map(|i| eval(i, sc)).collect::<Result<_, _>>()?),
        Expr::Object(fields) => {
            let mut m = Map::new();
            for (k, v) in fields {
                m.insert(k.clone(), eval(v, sc)?);
            }
            Value::Object(m)
        }
        Expr::Unary('-', x) => num(-number(&eval(x, sc)?).ok_or("`-` needs a number")?),
        Expr::Unary(_, x) => Value::Bool(!truthy(&eval(x, sc)?)),
        Expr::Binary(Op::And, a, b) => Value::Bool(truthy(&eval(a, sc)?) && truthy(&eval(b, sc)?)),
        Expr::Binary(Op::Or, a, b) => Value::Bool(truthy(&eval(a, sc)?) || truthy(&eval(b, sc)?)),
        Expr::Binary(op, a, b) => {
            let (x, y) = (eval(a, sc)?, eval(b, sc)?);
            binary(*op, &x, &y)?
        }
        Expr::Lambda(..) => return Err("a LAMBDA is only an argument of MAP, FILTER, REJECT…".into()),
        Expr::Call(f, args) => call(f, args, sc)?,
    })
}

fn index(v: &Value, k: &Value) -> Value {
    match (v, k) {
        (Value::Object(o), Value::String(s)) => o.get(s).cloned().unwrap_or(Value::Null),
        (Value::Object(o), Value::Number(n)) => o.get(&n.to_string()).cloned().unwrap_or(Value::Null),
        (Value::Array(a), k) => match number(k) {
            Some(i) if i < 0.0 => a.len().checked_sub((-i) as usize).and_then(|i| a.get(i)).cloned().unwrap_or(Value::Null),
            Some(i) => a.get(i as usize).cloned().unwrap_or(Value::Null),
            None => Value::Null,
        },
        _ => Value::Null,
    }
}

/// Tines' truth: false, null, 0, "", "false", [] and {} are false.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty() && s != "false",
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

/// A value as text (`TEXT`, `&`, `<<…>>` in text).
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn equal(x: &Value, y: &Value) -> bool {
    match (number(x), number(y), x, y) {
        (Some(a), Some(b), Value::Number(_) | Value::String(_), Value::Number(_) | Value::String(_)) if !(x.is_string() && y.is_string()) => a == b,
        _ => x == y,
    }
}

fn binary(op: Op, x: &Value, y: &Value) -> Result<Value, String> {
    let nums = || -> Result<(f64, f64), String> {
        match (number(x), number(y)) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(format!("{op:?} needs numbers, not {} and {}", short(x), short(y))),
        }
    };
    let order = || -> Option<std::cmp::Ordering> {
        match (x, y) {
            (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
            _ => number(x)?.partial_cmp(&number(y)?),
        }
    };
    Ok(match op {
        Op::Add => match (x, y) {
            (Value::Array(a), Value::Array(b)) => Value::Array(a.iter().chain(b).cloned().collect()),
            (Value::String(_), _) | (_, Value::String(_)) if number(x).is_none() || number(y).is_none() => Value::String(text(x) + &text(y)),
            _ => {
                let (a, b) = nums()?;
                num(a + b)
            }
        },
        Op::Sub => nums().map(|(a, b)| num(a - b))?,
        Op::Mul => nums().map(|(a, b)| num(a * b))?,
        Op::Div => {
            let (a, b) = nums()?;
            if b == 0.0 {
                return Err("division by zero".into());
            }
            num(a / b)
        }
        Op::Rem => {
            let (a, b) = nums()?;
            if b == 0.0 {
                return Err("division by zero".into());
            }
            num(a % b)
        }
        Op::Concat => Value::String(text(x) + &text(y)),
        Op::Eq => Value::Bool(equal(x, y)),
        Op::Ne => Value::Bool(!equal(x, y)),
        Op::Lt => Value::Bool(order() == Some(std::cmp::Ordering::Less)),
        Op::Le => Value::Bool(matches!(order(), Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal))),
        Op::Gt => Value::Bool(order() == Some(std::cmp::Ordering::Greater)),
        Op::Ge => Value::Bool(matches!(order(), Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal))),
        Op::And | Op::Or => unreachable!("short-circuited in eval"),
    })
}

fn short(v: &Value) -> String {
    let t = v.to_string();
    if t.chars().count() > 40 {
        format!("{}…", t.chars().take(40).collect::<String>())
    } else {
        t
    }
}

/// The functions formulas may call.
pub const FUNCTIONS: &[&str] = &[
    "IF",
    "AND",
    "OR",
    "NOT",
    "IS_EMPTY",
    "IS_PRESENT",
    "IS_BLANK",
    "TEXT",
    "TYPE",
    "SWITCH",
    "FILTER",
    "MAP",
    "REJECT",
    "FIND",
    "SIZE",
    "LENGTH",
    "DEFAULT",
    "COALESCE",
    "CONCAT",
    "JOIN",
    "SPLIT",
    "UPPER",
    "UPCASE",
    "LOWER",
    "DOWNCASE",
    "CAPITALIZE",
    "TRIM",
    "STRIP",
    "REPLACE",
    "CONTAINS",
    "INCLUDES",
    "MATCH",
    "REGEX_EXTRACT",
    "FIRST",
    "LAST",
    "UNIQ",
    "UNIQUE",
    "SORT",
    "REVERSE",
    "FLATTEN",
    "KEYS",
    "VALUES",
    "GET",
    "MERGE",
    "JSON_PARSE",
    "JSON_ENCODE",
    "TO_JSON",
    "NUMBER",
    "INT",
    "ROUND",
    "SUM",
    "MIN",
    "MAX",
    "ABS",
    "BASE64_ENCODE",
    "BASE64_DECODE",
    "URL_ENCODE",
    "NOW",
    "DATE",
    "UNIX_TIMESTAMP",
    "APPEND",
    "SLICE",
    "COUNT",
];

fn call(f: &str, args: &[Expr], sc: &mut Scope) -> Result<Value, String> {
    let arity = |n: std::ops::RangeInclusive<usize>| -> Result<(), String> {
        if n.contains(&args.len()) {
            Ok(())
        } else {
            Err(format!(
                "{f} takes {} argument(s), not {}",
                if n.start() == n.end() { n.start().to_string() } else { format!("{}–{}", n.start(), n.end()) },
                args.len()
            ))
        }
    };
    // Lazy ones first: only the branch taken is evaluated.
    match f {
        "IF" => {
            arity(2..=3)?;
            return if truthy(&eval(&args[0], sc)?) { eval(&args[1], sc) } else { args.get(2).map(|a| eval(a, sc)).unwrap_or(Ok(Value::Null)) };
        }
        "SWITCH" => {
            let v = eval(args.first().ok_or("SWITCH needs a value")?, sc)?;
            let mut i = 1;
            while i + 1 < args.len() {
                if equal(&v, &eval(&args[i], sc)?) {
                    return eval(&args[i + 1], sc);
                }
                i += 2;
            }
            return if i < args.len() { eval(&args[i], sc) } else { Ok(Value::Null) };
        }
        "AND" => {
            for a in args {
                if !truthy(&eval(a, sc)?) {
                    return Ok(Value::Bool(false));
                }
            }
            return Ok(Value::Bool(true));
        }
        "OR" => {
            for a in args {
                if truthy(&eval(a, sc)?) {
                    return Ok(Value::Bool(true));
                }
            }
            return Ok(Value::Bool(false));
        }
        "MAP" | "FILTER" | "REJECT" | "FIND" => {
            arity(2..=2)?;
            let list = eval(&args[0], sc)?;
            let Expr::Lambda(params, body) = &args[1] else { return Err(format!("{f}'s second argument is a LAMBDA(item, …)")) };
            let items = match list {
                Value::Array(a) => a,
                Value::Null => Vec::new(),
                Value::Object(o) => o.into_iter().map(|(k, v)| json!({"key": k, "value": v})).collect(),
                other => vec![other],
            };
            let mut out = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                let mut frame = HashMap::new();
                if let Some(p) = params.first() {
                    frame.insert(p.clone(), item.clone());
                }
                if let Some(p) = params.get(1) {
                    frame.insert(p.clone(), Value::from(i));
                }
                sc.locals.push(frame);
                let r = eval(body, sc);
                sc.locals.pop();
                let r = r?;
                match f {
                    "MAP" => out.push(r),
                    "FILTER" if truthy(&r) => out.push(item),
                    "REJECT" if !truthy(&r) => out.push(item),
                    "FIND" if truthy(&r) => return Ok(item),
                    _ => {}
                }
            }
            return Ok(if f == "FIND" { Value::Null } else { Value::Array(out) });
        }
        _ => {}
    }
    let a: Vec<Value> = args.iter().map(|x| eval(x, sc)).collect::<Result<_, _>>()?;
    let arg = |i: usize| a.get(i).cloned().unwrap_or(Value::Null);
    let list = |v: Value| match v {
        Value::Array(x) => x,
        Value::Null => Vec::new(),
        other => vec![other],
    };
    Ok(match f {
        "NOT" => {
            arity(1..=1)?;
            Value::Bool(!truthy(&arg(0)))
        }
        "IS_EMPTY" | "IS_BLANK" => Value::Bool(match &arg(0) {
            Value::String(s) => s.trim().is_empty(),
            other => !truthy(other) && !matches!(other, Value::Bool(false) | Value::Number(_)),
        }),
        "IS_PRESENT" => Value::Bool(match &arg(0) {
            Value::String(s) => !s.trim().is_empty(),
            Value::Null => false,
            Value::Array(x) => !x.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => true,
        }),
        "TEXT" => Value::String(text(&arg(0))),
        "TYPE" => Value::String(
            match arg(0) {
                Value::Null => "NULL",
                Value::Bool(_) => "BOOLEAN",
                Value::Number(_) => "NUMBER",
                Value::String(_) => "TEXT",
                Value::Array(_) => "ARRAY",
                Value::Object(_) => "OBJECT",
            }
            .into(),
        ),
        "SIZE" | "LENGTH" | "COUNT" => Value::from(match arg(0) {
            Value::Array(x) => x.len(),
            Value::Object(o) => o.len(),
            Value::String(s) => s.chars().count(),
            Value::Null => 0,
            other => text(&other).chars().count(),
        }),
        "DEFAULT" | "COALESCE" => a.iter().find(|v| !matches!(v, Value::Null) && *v != "").cloned().unwrap_or(Value::Null),
        "CONCAT" => match a.first() {
            Some(Value::Array(_)) => Value::Array(a.into_iter().flat_map(list).collect()),
            _ => Value::String(a.iter().map(text).collect()),
        },
        "APPEND" => Value::Array(list(arg(0)).into_iter().chain(a.iter().skip(1).cloned()).collect()),
        "JOIN" => Value::String(list(arg(0)).iter().map(text).collect::<Vec<_>>().join(&text(&arg(1)))),
        "SPLIT" => Value::Array(text(&arg(0)).split(&text(&arg(1))).map(|s| Value::String(s.into())).collect()),
        "UPPER" | "UPCASE" => Value::String(text(&arg(0)).to_uppercase()),
        "LOWER" | "DOWNCASE" => Value::String(text(&arg(0)).to_lowercase()),
        "CAPITALIZE" => {
            let t = text(&arg(0));
            let mut c = t.chars();
            Value::String(c.next().map(|f| f.to_uppercase().chain(c.flat_map(char::to_lowercase)).collect()).unwrap_or_default())
        }
        "TRIM" | "STRIP" => Value::String(text(&arg(0)).trim().into()),
        "REPLACE" => Value::String(text(&arg(0)).replace(&text(&arg(1)), &text(&arg(2)))),
        "CONTAINS" | "INCLUDES" => Value::Bool(match arg(0) {
            Value::Array(x) => x.iter().any(|v| equal(v, &arg(1))),
            Value::Object(o) => o.contains_key(&text(&arg(1))),
            other => text(&other).contains(&text(&arg(1))),
        }),
        "MATCH" | "REGEX_EXTRACT" => {
            let re = regex_of(&text(&arg(1)))?;
            let t = text(&arg(0));
            if f == "MATCH" {
                Value::Bool(re.is_match(&t))
            } else {
                re.captures(&t).map(|c| Value::String(c.get(1).or(c.get(0)).map(|m| m.as_str()).unwrap_or("").into())).unwrap_or(Value::Null)
            }
        }
        "FIRST" => list(arg(0)).into_iter().next().unwrap_or(Value::Null),
        "LAST" => list(arg(0)).pop().unwrap_or(Value::Null),
        "UNIQ" | "UNIQUE" => {
            let mut out: Vec<Value> = Vec::new();
            for v in list(arg(0)) {
                if !out.contains(&v) {
                    out.push(v);
                }
            }
            Value::Array(out)
        }
        "SORT" => {
            let mut x = list(arg(0));
            x.sort_by(|p, q| match (number(p), number(q)) {
                (Some(m), Some(n)) if !p.is_string() || !q.is_string() => m.partial_cmp(&n).unwrap_or(std::cmp::Ordering::Equal),
                _ => text(p).cmp(&text(q)),
            });
            Value::Array(x)
        }
        "REVERSE" => Value::Array(list(arg(0)).into_iter().rev().collect()),
        "FLATTEN" => Value::Array(list(arg(0)).into_iter().flat_map(list).collect()),
        "SLICE" => {
            let x = list(arg(0));
            let start = number(&arg(1)).unwrap_or(0.0).max(0.0) as usize;
            let len = number(&arg(2)).map(|n| n.max(0.0) as usize).unwrap_or(x.len());
            Value::Array(x.into_iter().skip(start).take(len).collect())
        }
        "KEYS" => match arg(0) {
            Value::Object(o) => Value::Array(o.keys().map(|k| Value::String(k.clone())).collect()),
            _ => Value::Array(Vec::new()),
        },
        "VALUES" => match arg(0) {
            Value::Object(o) => Value::Array(o.values().cloned().collect()),
            _ => Value::Array(Vec::new()),
        },
        "GET" => {
            let mut v = arg(0);
            for part in text(&arg(1)).split('.').filter(|p| !p.is_empty()) {
                v = index(&v, &Value::String(part.into()));
            }
            if v.is_null() {
                arg(2)
            } else {
                v
            }
        }
        "MERGE" => {
            let mut m = Map::new();
            for v in &a {
                if let Value::Object(o) = v {
                    m.extend(o.clone());
                }
            }
            Value::Object(m)
        }
        "JSON_PARSE" => serde_json::from_str(&text(&arg(0))).map_err(|e| format!("JSON_PARSE: not JSON ({e})"))?,
        "JSON_ENCODE" | "TO_JSON" => Value::String(arg(0).to_string()),
        "NUMBER" => number(&arg(0)).map(num).unwrap_or(Value::Null),
        "INT" => number(&arg(0)).map(|n| Value::from(n.trunc() as i64)).unwrap_or(Value::Null),
        "ROUND" => {
            let p = 10f64.powi(number(&arg(1)).unwrap_or(0.0) as i32);
            number(&arg(0)).map(|n| num((n * p).round() / p)).unwrap_or(Value::Null)
        }
        "ABS" => number(&arg(0)).map(|n| num(n.abs())).unwrap_or(Value::Null),
        "SUM" | "MIN" | "MAX" => {
            let ns: Vec<f64> = a.iter().cloned().flat_map(list).filter_map(|v| number(&v)).collect();
            match f {
                "SUM" => num(ns.iter().sum()),
                "MIN" => ns.iter().cloned().reduce(f64::min).map(num).unwrap_or(Value::Null),
                _ => ns.iter().cloned().reduce(f64::max).map(num).unwrap_or(Value::Null),
            }
        }
        "BASE64_ENCODE" => {
            use base64::Engine;
            Value::String(base64::engine::general_purpose::STANDARD.encode(text(&arg(0))))
        }
        "BASE64_DECODE" => {
            use base64::Engine;
            let b = base64::engine::general_purpose::STANDARD.decode(text(&arg(0)).trim()).map_err(|e| format!("BASE64_DECODE: {e}"))?;
            Value::String(String::from_utf8_lossy(&b).into_owned())
        }
        "URL_ENCODE" => Value::String(percent_encoding::utf8_percent_encode(&text(&arg(0)), percent_encoding::NON_ALPHANUMERIC).to_string()),
        "NOW" => Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        "UNIX_TIMESTAMP" => Value::from(chrono::Utc::now().timestamp()),
        "DATE" => {
            let t = text(&arg(0));
            let when = if t.is_empty() || t.eq_ignore_ascii_case("now") {
                chrono::Utc::now()
            } else if let Some(n) = number(&arg(0)) {
                chrono::DateTime::from_timestamp(n as i64, 0).ok_or("DATE: timestamp out of range")?
            } else {
                chrono::DateTime::parse_from_rfc3339(&t).map_err(|e| format!("DATE: `{t}` is not a date ({e})"))?.with_timezone(&chrono::Utc)
            };
            let fmt = text(&arg(1));
            Value::String(if fmt.is_empty() { when.to_rfc3339_opts(chrono::SecondsFormat::Secs, true) } else { when.format(&fmt).to_string() })
        }
        other => return Err(format!("function {other} is not supported (supported: {})", FUNCTIONS.join(", "))),
    })
}

fn regex_of(text: &str) -> Result<Regex, String> {
    crate::regex(text).ok_or_else(|| format!("regex `{text}` does not compile"))
}

/// Every function named in `e` that formulas here do not have (for the importer's report).
pub fn unknown_functions(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::Call(f, args) => {
            if !FUNCTIONS.contains(&f.as_str()) {
                out.push(f.clone());
            }
            args.iter().for_each(|x| unknown_functions(x, out));
        }
        Expr::Path(_, ks) => ks.iter().for_each(|x| unknown_functions(x, out)),
        Expr::List(xs) => xs.iter().for_each(|x| unknown_functions(x, out)),
        Expr::Object(fs) => fs.iter().for_each(|(_, x)| unknown_functions(x, out)),
        Expr::Unary(_, x) | Expr::Lambda(_, x) => unknown_functions(x, out),
        Expr::Binary(_, a, b) | Expr::Index(a, b) => {
            unknown_functions(a, out);
            unknown_functions(b, out);
        }
        Expr::Literal(_) => {}
    }
}

fn interpolation() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"(?s)<<(.*?)>>").unwrap())
}

/// Whether a string is a formula field (`=expr`) or holds `<<expr>>`.
pub fn is_formula(s: &str) -> bool {
    (s.starts_with('=') && s.len() > 1) || (s.contains("<<") && interpolation().is_match(s))
}

/// Every formula source in a string (for checks at load).
pub fn sources(s: &str) -> Vec<String> {
    if let Some(f) = s.strip_prefix('=').filter(|f| !f.is_empty()) {
        return vec![f.to_string()];
    }
    interpolation().captures_iter(s).map(|c| c[1].to_string()).collect()
}

#[cfg(feature = "evaluate")]
/// Renders a string's formulas: `=expr` gives the value; `<<expr>>` alone
/// gives the value too; inside text each gives its text.
pub fn render(s: &str, ctx: &Map<String, Value>) -> Result<Value, String> {
    let mut sc = Scope::new(ctx);
    if let Some(f) = s.strip_prefix('=').filter(|f| !f.is_empty()) {
        return eval(&parse(f)?, &mut sc);
    }
    let re = interpolation();
    if let Some(c) = re.captures(s) {
        if c.get(0).is_some_and(|m| m.start() == 0 && m.end() == s.len()) {
            return eval(&parse(&c[1])?, &mut sc);
        }
    }
    let mut out = String::new();
    let mut last = 0;
    for c in re.captures_iter(s) {
        let m = c.get(0).unwrap();
        out.push_str(&s[last..m.start()]);
        out.push_str(&text(&eval(&parse(&c[1])?, &mut sc)?));
        last = m.end();
    }
    out.push_str(&s[last..]);
    Ok(Value::String(out))
}

#[cfg(all(test, feature = "evaluate"))]
mod tests {
    use super::*;

    fn ctx() -> Map<String, Value> {
        json!({
            "get_user": {"body": {"name": "ana", "role": "admin", "groups": ["it", "domain-admins"], "score": "7", "items": [{"id": 1, "ok": true}, {"id": 2, "ok": false}, {"id": 3, "ok": true}]}, "status": 200},
            "receive alert": {"severity": 4},
            "INPUT": {"x": 1}
        })
        .as_object()
        .unwrap()
        .clone()
    }

    fn f(s: &str) -> Value {
        render(s, &ctx()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn paths_literals_and_operators() {
        assert_eq!(f("=get_user.body.name"), json!("ana"));
        assert_eq!(f("=get_user.body.groups[1]"), json!("domain-admins"));
        assert_eq!(f("=get_user.body.groups[-1]"), json!("domain-admins"));
        assert_eq!(f("=get_user[\"body\"].items[0].id + 1"), json!(2));
        assert_eq!(f("=get_user.body.score * 2 + 1"), json!(15), "\"7\" is 7");
        assert_eq!(f("=\"a\" & 1 & TRUE"), json!("a1true"));
        assert_eq!(f("=get_user.status = 200 && get_user.body.role == \"admin\""), json!(true));
        assert_eq!(f("=get_user.body.missing.deeper"), Value::Null, "a missing key is null, as in Tines");
        assert_eq!(f("=[1, 2] + [3]"), json!([1, 2, 3]));
        assert_eq!(f("={\"k\": get_user.body.name, n: 2 - 3}"), json!({"k": "ana", "n": -1}));
        assert_eq!(f("=!(1 > 2)"), json!(true));
        assert_eq!(f("=10 / 4"), json!(2.5));
    }

    #[test]
    fn functions_tines_exports_use() {
        assert_eq!(f("=IF(get_user.body.role = \"admin\", \"page\", \"log\")"), json!("page"));
        assert_eq!(f("=IF(FALSE, 1)"), Value::Null);
        assert_eq!(f("=OR(FALSE, IS_EMPTY(\"\"))"), json!(true));
        assert_eq!(f("=AND(TRUE, NOT(IS_EMPTY(get_user.body.groups)))"), json!(true));
        assert_eq!(f("=TEXT(42)"), json!("42"));
        assert_eq!(f("=TYPE(get_user.body.groups)"), json!("ARRAY"));
        assert_eq!(f("=SWITCH(get_user.body.role, \"user\", 1, \"admin\", 2, 0)"), json!(2));
        assert_eq!(f("=SWITCH(\"x\", \"user\", 1, 0)"), json!(0));
        assert_eq!(f("=MAP(get_user.body.items, LAMBDA(i, i.id * 10))"), json!([10, 20, 30]));
        assert_eq!(f("=FILTER(get_user.body.items, LAMBDA(i, i.ok))").as_array().unwrap().len(), 2);
        assert_eq!(f("=REJECT(get_user.body.items, LAMBDA(i, i.ok))"), json!([{"id": 2, "ok": false}]));
        assert_eq!(f("=SIZE(get_user.body.groups)"), json!(2));
        assert_eq!(f("=JOIN(SORT(get_user.body.groups), \", \")"), json!("domain-admins, it"));
        assert_eq!(f("=MATCH(get_user.body.name, \"^a\")"), json!(true));
        assert_eq!(f("=DEFAULT(get_user.body.none, \"fallback\")"), json!("fallback"));
    }

    #[test]
    fn interpolation_in_text_and_alone() {
        assert_eq!(f("hello <<get_user.body.name>>, status <<get_user.status>>"), json!("hello ana, status 200"));
        assert_eq!(f("<<get_user.body.groups>>"), json!(["it", "domain-admins"]), "alone it passes the value");
        assert_eq!(f("no formula here"), json!("no formula here"));
    }

    #[test]
    fn a_formula_cannot_make_the_host_spin_or_fill_memory() {
        let mut c = ctx();
        c.insert("big".into(), json!((0..5000).collect::<Vec<_>>()));
        let e = render("=MAP(big, LAMBDA(a, MAP(big, LAMBDA(b, MAP(big, LAMBDA(c, 1))))))", &c).unwrap_err();
        assert!(e.contains("steps"), "{e}");
        // 5,000 texts of ~25 KB each: refused by size before it is 125 MB.
        let e = render("=MAP(big, LAMBDA(a, JOIN(big, \",\")))", &c).unwrap_err();
        assert!(e.contains("at most") || e.contains("steps"), "{e}");
    }

    #[test]
    fn bad_formulas_say_what_is_wrong() {
        assert!(render("=IF(1, 2", &ctx()).unwrap_err().contains("expected"));
        assert!(render("=NOPE(1)", &ctx()).unwrap_err().contains("NOPE is not supported"));
        assert!(render("=1 / 0", &ctx()).unwrap_err().contains("division by zero"));
        assert!(render(&format!("={}1{}", "(".repeat(200), ")".repeat(200)), &ctx()).unwrap_err().contains("nested deeper"));
        let mut unknown = Vec::new();
        unknown_functions(&parse("IF(X(1), Y(), 2)").unwrap(), &mut unknown);
        assert_eq!(unknown, ["X", "Y"]);
    }
}
