//! The subset of Go's text/template that `docker ... inspect -f` users actually write:
//! `{{.Field.Sub}}`, `{{json .X}}`, `{{range .X}}...{{end}}` (maps iterate values in key order),
//! `{{index .X "key"}}`, `{{len .X}}`, `{{println}}` and `{{.}}`. Evaluated over JSON values.

use serde_json::Value;
use thiserror::Error;

/// A template that could not be parsed or evaluated.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TemplateError {
    /// `{{` without `}}`, `{{end}}` without `{{range}}`, and the like.
    #[error("template parsing error: {0}")]
    Parse(String),
    /// A function or form this subset does not know.
    #[error("template: function {0:?} not defined")]
    UnknownFunction(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Path(Vec<String>),
    Str(String),
    Num(u64),
    /// `(index .X "k").Field`: a parenthesized call, then a field path into its result.
    Call(Box<Node>, Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Print(Arg),
    Json(Arg),
    Index(Arg, Vec<Arg>),
    Len(Arg),
    Newline,
    Range(Arg, Vec<Node>),
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
}

impl Template {
    /// Parses `source`.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let mut tokens = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                tokens.push(Token::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| TemplateError::Parse("unclosed action".into()))?;
            tokens.push(Token::Action(
                after[..end].trim().trim_matches('-').trim().to_string(),
            ));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            tokens.push(Token::Text(rest.to_string()));
        }
        let mut iter = tokens.into_iter();
        let nodes = parse_nodes(&mut iter, false)?;
        Ok(Template { nodes })
    }

    /// Renders the template against `data`.
    pub fn render(&self, data: &Value) -> String {
        let mut out = String::new();
        render_nodes(&self.nodes, data, &mut out);
        out
    }
}

enum Token {
    Text(String),
    Action(String),
}

fn parse_nodes(
    tokens: &mut impl Iterator<Item = Token>,
    in_range: bool,
) -> Result<Vec<Node>, TemplateError> {
    let mut nodes = Vec::new();
    while let Some(token) = tokens.next() {
        match token {
            Token::Text(text) => nodes.push(Node::Text(text)),
            Token::Action(action) => {
                let words = split_words(&action)?;
                let Some(first) = words.first() else {
                    return Err(TemplateError::Parse("empty action".into()));
                };
                match first.as_str() {
                    "end" if in_range => return Ok(nodes),
                    "end" => return Err(TemplateError::Parse("unexpected {{end}}".into())),
                    "range" => {
                        let arg = one_arg(&words)?;
                        let body = parse_nodes(tokens, true)?;
                        nodes.push(Node::Range(arg, body));
                    }
                    "json" => nodes.push(Node::Json(one_arg(&words)?)),
                    "len" => nodes.push(Node::Len(one_arg(&words)?)),
                    "println" => nodes.push(Node::Newline),
                    "index" => {
                        nodes.push(index_node(&words)?);
                    }
                    word if word.starts_with(['.', '"', '(']) => {
                        if words.len() != 1 {
                            return Err(TemplateError::Parse(format!("unexpected {:?}", words[1])));
                        }
                        nodes.push(Node::Print(parse_arg(word)?));
                    }
                    other => return Err(TemplateError::UnknownFunction(other.to_string())),
                }
            }
        }
    }
    if in_range {
        return Err(TemplateError::Parse(
            "unexpected EOF: {{range}} without {{end}}".into(),
        ));
    }
    Ok(nodes)
}

fn one_arg(words: &[String]) -> Result<Arg, TemplateError> {
    match words {
        [_, arg] => parse_arg(arg),
        _ => Err(TemplateError::Parse(format!(
            "{} takes one argument",
            words[0]
        ))),
    }
}

/// `index TARGET KEY...` (words include `index`).
fn index_node(words: &[String]) -> Result<Node, TemplateError> {
    let args: Vec<Arg> = words[1..]
        .iter()
        .map(|w| parse_arg(w))
        .collect::<Result<_, _>>()?;
    let Some((target, keys)) = args.split_first() else {
        return Err(TemplateError::Parse("index needs arguments".into()));
    };
    Ok(Node::Index(target.clone(), keys.to_vec()))
}

fn parse_arg(word: &str) -> Result<Arg, TemplateError> {
    if let Some(inner) = word.strip_prefix('(') {
        let close = inner
            .rfind(')')
            .ok_or_else(|| TemplateError::Parse(format!("unclosed parenthesis in {word}")))?;
        let (call, rest) = (&inner[..close], &inner[close + 1..]);
        let words = split_words(call)?;
        let node = match words.first().map(String::as_str) {
            Some("index") => index_node(&words)?,
            Some("len") => Node::Len(one_arg(&words)?),
            Some(w) if w.starts_with('.') || w.starts_with('"') => Node::Print(parse_arg(w)?),
            Some(other) => return Err(TemplateError::UnknownFunction(other.to_string())),
            None => return Err(TemplateError::Parse("empty parentheses".into())),
        };
        let path = rest
            .split('.')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        return Ok(Arg::Call(Box::new(node), path));
    }
    if let Ok(n) = word.parse::<u64>() {
        return Ok(Arg::Num(n));
    }
    if let Some(s) = word.strip_prefix('"') {
        return s
            .strip_suffix('"')
            .map(|s| Arg::Str(s.to_string()))
            .ok_or_else(|| TemplateError::Parse(format!("unterminated string {word}")));
    }
    let Some(path) = word.strip_prefix('.') else {
        return Err(TemplateError::Parse(format!("bad argument {word:?}")));
    };
    Ok(Arg::Path(
        path.split('.')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
    ))
}

fn split_words(action: &str) -> Result<Vec<String>, TemplateError> {
    let mut words = Vec::new();
    let mut chars = action.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            let mut word = String::from('"');
            chars.next();
            let mut closed = false;
            for c in chars.by_ref() {
                word.push(c);
                if c == '"' {
                    closed = true;
                    break;
                }
            }
            if !closed {
                return Err(TemplateError::Parse("unterminated string".into()));
            }
            words.push(word);
        } else {
            let (mut word, mut depth, mut quoted) = (String::new(), 0usize, false);
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() && depth == 0 && !quoted {
                    break;
                }
                match c {
                    '"' => quoted = !quoted,
                    '(' if !quoted => depth += 1,
                    ')' if !quoted => depth = depth.saturating_sub(1),
                    _ => {}
                }
                word.push(c);
                chars.next();
            }
            words.push(word);
        }
    }
    Ok(words)
}

fn resolve<'a>(arg: &Arg, data: &'a Value) -> Option<std::borrow::Cow<'a, Value>> {
    match arg {
        Arg::Call(node, path) => {
            let mut v = evaluate(node, data)?;
            for key in path {
                v = v.get(key)?.clone();
            }
            Some(std::borrow::Cow::Owned(v))
        }
        Arg::Str(s) => Some(std::borrow::Cow::Owned(Value::String(s.clone()))),
        Arg::Num(n) => Some(std::borrow::Cow::Owned(Value::from(*n))),
        Arg::Path(path) => {
            let mut v = data;
            for key in path {
                v = v.get(key)?;
            }
            Some(std::borrow::Cow::Borrowed(v))
        }
    }
}

/// The value a node produces (for `index` and `len` inside parentheses).
fn evaluate(node: &Node, data: &Value) -> Option<Value> {
    match node {
        Node::Index(target, keys) => index_value(target, keys, data),
        Node::Len(arg) => Some(Value::from(length(arg, data))),
        Node::Print(arg) => resolve(arg, data).map(|v| v.into_owned()),
        _ => None,
    }
}

fn index_value(target: &Arg, keys: &[Arg], data: &Value) -> Option<Value> {
    let mut current = resolve(target, data).map(|v| v.into_owned());
    for key in keys {
        let key = resolve(key, data).map(|v| v.into_owned());
        current = match (current, key) {
            (Some(Value::Object(map)), Some(Value::String(k))) => map.get(&k).cloned(),
            (Some(Value::Array(items)), Some(Value::Number(n))) => {
                n.as_u64().and_then(|i| items.get(i as usize).cloned())
            }
            _ => None,
        };
    }
    current
}

fn length(arg: &Arg, data: &Value) -> usize {
    resolve(arg, data).map_or(0, |v| match &*v {
        Value::Array(a) => a.len(),
        Value::Object(o) => o.len(),
        Value::String(s) => s.len(),
        _ => 0,
    })
}

/// Go's default formatting: strings bare, maps as `map[k:v]`, null as `<no value>`.
fn go_format(v: &Value) -> String {
    match v {
        Value::Null => "<no value>".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => {
            format!(
                "[{}]",
                items.iter().map(go_format).collect::<Vec<_>>().join(" ")
            )
        }
        Value::Object(map) => format!(
            "map[{}]",
            map.iter()
                .map(|(k, v)| format!("{k}:{}", go_format(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

fn render_nodes(nodes: &[Node], data: &Value, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Newline => out.push('\n'),
            Node::Print(arg) => {
                out.push_str(&resolve(arg, data).map_or("<no value>".into(), |v| go_format(&v)))
            }
            Node::Json(arg) => {
                out.push_str(&resolve(arg, data).map_or("null".into(), |v| v.to_string()))
            }
            Node::Len(arg) => out.push_str(&length(arg, data).to_string()),
            Node::Index(target, keys) => out.push_str(
                &index_value(target, keys, data).map_or("<no value>".into(), |v| go_format(&v)),
            ),
            Node::Range(arg, body) => match resolve(arg, data).as_deref() {
                Some(Value::Array(items)) => {
                    for item in items {
                        render_nodes(body, item, out);
                    }
                }
                Some(Value::Object(map)) => {
                    // serde_json's map is sorted by key (no preserve_order), like Go's range.
                    for item in map.values() {
                        render_nodes(body, item, out);
                    }
                }
                _ => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(t: &str, data: &Value) -> String {
        Template::parse(t).expect("parses").render(data)
    }

    #[test]
    fn docker_forms() {
        let net = json!({
            "Name": "web",
            "IPAM": {"Driver": "default", "Config": [{"Subnet": "10.20.0.0/24", "Gateway": "10.20.0.1"}]},
            "Containers": {"b": {"Name": "c2", "IPv4Address": "10.20.0.3/24"},
                           "a": {"Name": "c1", "IPv4Address": "10.20.0.2/24"}},
            "Labels": {"env": "prod"},
        });
        assert_eq!(render("{{.Name}}", &net), "web");
        assert_eq!(
            render("{{json .IPAM}}", &net),
            r#"{"Config":[{"Gateway":"10.20.0.1","Subnet":"10.20.0.0/24"}],"Driver":"default"}"#
        );
        assert_eq!(
            render("{{range .IPAM.Config}}{{.Subnet}}{{end}}", &net),
            "10.20.0.0/24"
        );
        assert_eq!(
            render(
                "{{range .Containers}}{{.Name}}={{.IPv4Address}} {{end}}",
                &net
            ),
            "c1=10.20.0.2/24 c2=10.20.0.3/24 "
        );
        assert_eq!(render(r#"{{index .Labels "env"}}"#, &net), "prod");
        assert_eq!(render("{{len .Containers}}", &net), "2");
        assert_eq!(render("{{ .Missing }}", &net), "<no value>");
        assert_eq!(render("{{.Labels}}", &net), "map[env:prod]");
        assert_eq!(
            render(r#"{{(index .Containers "a").IPv4Address}}"#, &net),
            "10.20.0.2/24"
        );
        assert_eq!(render(r#"{{json (index .IPAM.Config 0)}}"#, &net).len(), 47);
        assert_eq!(
            render(r#"{{(index .Containers "zz").Name}}"#, &net),
            "<no value>"
        );
    }

    #[test]
    fn errors_are_clear() {
        assert!(matches!(
            Template::parse("{{.Name"),
            Err(TemplateError::Parse(_))
        ));
        assert!(matches!(
            Template::parse("{{range .X}}"),
            Err(TemplateError::Parse(_))
        ));
        assert!(matches!(
            Template::parse("{{end}}"),
            Err(TemplateError::Parse(_))
        ));
        assert_eq!(
            Template::parse("{{upper .Name}}").unwrap_err(),
            TemplateError::UnknownFunction("upper".into())
        );
    }
}
