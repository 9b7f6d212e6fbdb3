//! JSON mode with a schema (`response_format: {"type": "json_schema", ...}`): the reply
//! is held to one JSON object of the schema, as OpenAI's Structured Outputs hold it. The
//! subset taken: objects of `properties` (the `required` ones in that order, then the
//! others in their names' order, each at most once, no keys besides), arrays of
//! `items` (`minItems` to `maxItems` of them), strings (`minLength` to `maxLength`
//! characters), numbers, integers, booleans, null, `enum` and `const` of scalars, a
//! `type` list or `anyOf` (or `oneOf`) whose alternatives start with different bytes
//! (such as a type or null), `allOf` of one schema, and `$ref` to the root (`#`) or to its `$defs` / `definitions` (recursion
//! included, as nested Pydantic models write them). Anything else is refused by name
//! when the request is read, never ignored.
//!
//! [`Schema::compile`] turns the schema into a table of nodes and literal byte
//! strings (keys as JSON spells them, an object's keys one after another, enum values,
//! `true`/`false`/`null`); [`SchemaPrefix`] is the grammar as a `Copy` byte automaton
//! over that table (a fixed stack of open containers), so that
//! [`super::json::JsonMode`] tries each token on a copy, as it does for a plain JSON
//! object.

use serde_json::{Map, Value};

use super::json::{end_space, is_space, take_space, Grammar, Number, StringState, StringStep};

/// Containers open at once, at most (and schema nesting).
const MAX_DEPTH: usize = 32;
/// Parts of a schema, at most.
const MAX_NODES: usize = 1024;
/// Values of one `enum`, and properties of one object, at most (a bit each while they
/// are matched).
const MAX_LITERALS: usize = 64;

/// The schema keywords taken; `description`, `title`, `default`, `$schema` and
/// `strict` are read and left.
const KEYWORDS: [&str; 22] = [
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "$defs",
    "definitions",
    "description",
    "title",
    "default",
    "$schema",
    "strict",
];

/// A property of an object node.
#[derive(Debug, Clone)]
struct Key {
    /// The key as JSON spells it; an object's keys are consecutive literals.
    literal: u16,
    value: u16,
    required: bool,
}

#[derive(Debug, Clone)]
enum Node {
    /// Keys in order: the required ones, then the others.
    Object(Vec<Key>),
    /// Items of a node, `min` to `max` of them.
    Array { items: u16, min: u16, max: u16 },
    /// `min` to `max` characters.
    String { min: u16, max: u16 },
    Number { integer: bool },
    /// One of `literals[first .. first + count]`.
    Literals { first: u16, count: u8 },
    /// One of these, told apart by their first byte.
    AnyOf(Vec<u16>),
}

/// A compiled schema: its nodes (the root first) and literal byte strings.
#[derive(Debug, Clone)]
pub struct Schema {
    nodes: Vec<Node>,
    literals: Vec<Box<[u8]>>,
    /// Keywords outside [`KEYWORDS`] are read past, not refused
    /// ([`Schema::compile_values`]).
    lenient: bool,
    /// The schema `$ref`s resolve in, while compiling.
    root: Value,
    /// Each `$ref` met and its node.
    refs: Vec<(String, u16)>,
}

impl Schema {
    /// The schema of a `json_schema` response format's `schema`; the error names what
    /// is not supported or not well formed.
    pub fn compile(schema: &Value) -> Result<Schema, String> {
        let mut s = Schema { nodes: Vec::new(), literals: Vec::new(), lenient: false, root: schema.clone(), refs: Vec::new() };
        // Node 0 is where the automaton starts: the root's node once compiled (and
        // what `#` refers to).
        s.reference_to("#", schema, 0)?;
        s.refuse_empty_loops()?;
        // (Through the nodes of `$ref`s: an AnyOf of one each.)
        let mut root = 0;
        while let Node::AnyOf(alts) = &s.nodes[root] {
            match alts[..] {
                [one] if one as usize != root => root = one as usize,
                _ => break,
            }
        }
        if !matches!(s.nodes[root], Node::Object(_)) {
            return Err("the schema must describe an object (\"type\": \"object\"), as OpenAI's".into());
        }
        s.root = Value::Null;
        Ok(s)
    }

    /// One schema for several values (functions' arguments), each a `(root, schema)`
    /// pair whose `$ref`s resolve in `root` (its `parameters`): the node of each, or
    /// `None` where its schema is outside the subset taken. Keywords that only bound a
    /// value (`minimum`, `format`, `nullable`, ...) are read past: its type is held,
    /// not its bounds.
    pub fn compile_values<'a>(schemas: impl IntoIterator<Item = (&'a Value, &'a Value)>) -> (Schema, Vec<Option<u16>>) {
        let mut s = Schema { nodes: Vec::new(), literals: Vec::new(), lenient: true, root: Value::Null, refs: Vec::new() };
        let nodes = schemas
            .into_iter()
            .map(|(root, v)| {
                if *root != s.root {
                    (s.root, s.refs) = (root.clone(), Vec::new());
                }
                let (nodes, literals) = (s.nodes.len(), s.literals.len());
                let node = s.node(v, 0).ok().filter(|_| s.refuse_empty_loops().is_ok());
                if node.is_none() {
                    // What the refused schema added is of no use (nor are its refs).
                    s.nodes.truncate(nodes);
                    s.literals.truncate(literals);
                    s.refs.retain(|&(_, n)| (n as usize) < nodes);
                }
                node
            })
            .collect();
        s.root = Value::Null;
        (s, nodes)
    }

    /// The node of `target`, which `$ref` `name` names: compiled once, behind a node of
    /// its own made first, so that a schema that refers to itself refers to that node.
    fn reference_to(&mut self, name: &str, target: &Value, depth: usize) -> Result<u16, String> {
        let at = self.push(Node::AnyOf(Vec::new()))?;
        self.refs.push((name.to_string(), at));
        let node = self.node(target, depth)?;
        self.nodes[at as usize] = Node::AnyOf(vec![node]);
        Ok(at)
    }

    /// `$ref`s that come back to themselves through alternatives only (`X` is `X`, or
    /// `X` is `X` or null): a value of them would never begin. Objects and arrays
    /// between read a byte first, so recursion through them is taken.
    fn refuse_empty_loops(&self) -> Result<(), String> {
        // 0: not seen, 1: on the path, 2: done.
        let mut state = vec![0u8; self.nodes.len()];
        fn visit(s: &Schema, n: usize, state: &mut [u8]) -> bool {
            match state[n] {
                1 => return false,
                2 => return true,
                _ => {}
            }
            state[n] = 1;
            let ok = match &s.nodes[n] {
                Node::AnyOf(alts) => alts.iter().all(|&a| visit(s, a as usize, state)),
                _ => true,
            };
            state[n] = 2;
            ok
        }
        match (0..self.nodes.len()).all(|n| visit(self, n, &mut state)) {
            true => Ok(()),
            false => Err("a '$ref' comes back to itself before any value begins".into()),
        }
    }

    /// `$ref` `name`: `#`, or `#/$defs/NAME` or `#/definitions/NAME` of the root.
    fn reference(&mut self, name: &str, depth: usize) -> Result<u16, String> {
        if let Some(&(_, node)) = self.refs.iter().find(|(n, _)| n == name) {
            return Ok(node);
        }
        let target = name
            .strip_prefix("#/")
            .and_then(|path| path.split_once('/'))
            .filter(|(section, def)| matches!(*section, "$defs" | "definitions") && !def.contains('/'))
            .and_then(|(section, def)| self.root.get(section)?.get(def.replace("~1", "/").replace("~0", "~")))
            .cloned()
            .ok_or_else(|| format!("'$ref' {name:?} is not '#' or a '#/$defs/...' of this schema"))?;
        self.reference_to(name, &target, depth)
    }

    fn push(&mut self, node: Node) -> Result<u16, String> {
        if self.nodes.len() == MAX_NODES {
            return Err(format!("the schema has more than {MAX_NODES} parts"));
        }
        self.nodes.push(node);
        Ok((self.nodes.len() - 1) as u16)
    }

    fn node(&mut self, v: &Value, depth: usize) -> Result<u16, String> {
        // Each level may be a container: the automaton's stack holds them all.
        if depth >= MAX_DEPTH {
            return Err(format!("the schema nests more than {MAX_DEPTH} deep"));
        }
        let Value::Object(o) = v else { return Err(format!("a schema must be an object, not {v}")) };
        if let Some(k) = o.keys().find(|k| !self.lenient && !KEYWORDS.contains(&k.as_str())) {
            return Err(format!("the schema keyword '{k}' is not supported"));
        }
        if let Some(r) = o.get("$ref") {
            let Value::String(r) = r else { return Err("'$ref' must be a string".into()) };
            return self.reference(r, depth + 1);
        }
        if let Some(c) = o.get("const") {
            return self.literals(std::slice::from_ref(c));
        }
        if let Some(e) = o.get("enum") {
            let Value::Array(values) = e else { return Err("'enum' must be a list".into()) };
            return self.literals(values);
        }
        // `oneOf` as `anyOf`: alternatives that start differently match one at most.
        if let Some((name, alts)) = ["anyOf", "oneOf"].iter().find_map(|&k| Some((k, o.get(k)?))) {
            let Value::Array(alts) = alts else { return Err(format!("'{name}' must be a list")) };
            let alts = alts.iter().map(|a| self.node(a, depth + 1)).collect::<Result<Vec<_>, _>>()?;
            return self.any_of(alts);
        }
        // `allOf` of one schema (as some generators wrap a `$ref` to describe it).
        if let Some(all) = o.get("allOf") {
            return match all {
                Value::Array(one) if one.len() == 1 => self.node(&one[0], depth + 1),
                _ => Err("'allOf' is taken with one schema only".into()),
            };
        }
        match o.get("type") {
            Some(Value::String(t)) => self.typed(t, o, depth),
            Some(Value::Array(types)) => {
                let alts = types
                    .iter()
                    .map(|t| t.as_str().ok_or_else(|| "'type' must be a name or a list of names".to_string()).and_then(|t| self.typed(t, o, depth)))
                    .collect::<Result<Vec<_>, _>>()?;
                self.any_of(alts)
            }
            _ => Err("a schema needs 'type', 'enum', 'const' or 'anyOf'".into()),
        }
    }

    fn typed(&mut self, t: &str, o: &Map<String, Value>, depth: usize) -> Result<u16, String> {
        let node = match t {
            "object" => {
                if o.get("additionalProperties").is_some_and(|a| a != &Value::Bool(false)) {
                    return Err("'additionalProperties' must be false: the reply has only the listed properties".into());
                }
                let empty = Map::new();
                let props = match o.get("properties") {
                    None => &empty,
                    Some(Value::Object(p)) => p,
                    Some(_) => return Err("'properties' must be an object".into()),
                };
                let required: Vec<&str> = match o.get("required") {
                    None => Vec::new(),
                    Some(Value::Array(r)) => r.iter().map(|k| k.as_str().ok_or("'required' must list property names")).collect::<Result<_, _>>()?,
                    Some(_) => return Err("'required' must be a list".into()),
                };
                for (i, &k) in required.iter().enumerate() {
                    if required[..i].contains(&k) {
                        return Err(format!("'required' names '{k}' twice"));
                    }
                    if !props.contains_key(k) {
                        return Err(format!("'required' names '{k}', which is not in 'properties'"));
                    }
                }
                // The required keys in their order, then the others (in their names'
                // order: serde_json's maps keep no other).
                let optional = props.keys().map(String::as_str).filter(|k| !required.contains(k));
                let order: Vec<(&str, bool)> = required.iter().map(|&k| (k, true)).chain(optional.map(|k| (k, false))).collect();
                if order.len() > MAX_LITERALS {
                    return Err(format!("an object has more than {MAX_LITERALS} properties"));
                }
                let first = self.literals.len();
                for (k, _) in &order {
                    self.literal(serde_json::to_vec(k).expect("a string serialises"))?;
                }
                let mut keys = Vec::with_capacity(order.len());
                for (i, (k, required)) in order.into_iter().enumerate() {
                    keys.push(Key { literal: (first + i) as u16, value: self.node(&props[k], depth + 1)?, required });
                }
                Node::Object(keys)
            }
            "array" => {
                let (min, max) = (count(o, "minItems", 0)?, count(o, "maxItems", u16::MAX)?);
                if min > max {
                    return Err("'minItems' is more than 'maxItems'".into());
                }
                // (An array's count saturates at u16::MAX: past it, any number may follow.)
                Node::Array { items: self.node(o.get("items").ok_or("an array schema needs 'items'")?, depth + 1)?, min, max }
            }
            "string" => {
                let (min, max) = (count(o, "minLength", 0)?, count(o, "maxLength", u16::MAX)?);
                if min > max {
                    return Err("'minLength' is more than 'maxLength'".into());
                }
                Node::String { min, max }
            }
            "number" => Node::Number { integer: false },
            "integer" => Node::Number { integer: true },
            "boolean" => return self.literals(&[Value::Bool(true), Value::Bool(false)]),
            "null" => return self.literals(&[Value::Null]),
            other => return Err(format!("the type '{other}' is not supported")),
        };
        self.push(node)
    }

    fn literal(&mut self, bytes: Vec<u8>) -> Result<u16, String> {
        if self.literals.len() >= u16::MAX as usize {
            return Err("the schema has too many names and values".into());
        }
        self.literals.push(bytes.into_boxed_slice());
        Ok((self.literals.len() - 1) as u16)
    }

    /// A node for one of `values` (scalars), each spelled as serde_json writes it.
    fn literals(&mut self, values: &[Value]) -> Result<u16, String> {
        if values.is_empty() || values.len() > MAX_LITERALS {
            return Err(format!("'enum' must have 1 to {MAX_LITERALS} values"));
        }
        let first = self.literals.len() as u16;
        for v in values {
            if v.is_object() || v.is_array() {
                return Err("'enum' and 'const' values must be strings, numbers, booleans or null".into());
            }
            self.literal(serde_json::to_vec(v).expect("a scalar serialises"))?;
        }
        self.push(Node::Literals { first, count: values.len() as u8 })
    }

    fn any_of(&mut self, alts: Vec<u16>) -> Result<u16, String> {
        if alts.is_empty() {
            return Err("'anyOf' and 'type' lists must not be empty".into());
        }
        for (i, &a) in alts.iter().enumerate() {
            for &b in &alts[..i] {
                if (0..=255u8).any(|x| self.starts(a, x) && self.starts(b, x)) {
                    return Err("the alternatives of an 'anyOf' or 'type' list must start differently (an object, an array, a string, a number, true, false, null)".into());
                }
            }
        }
        self.push(Node::AnyOf(alts))
    }

    /// Whether a value of `node` may start with `b`.
    fn starts(&self, node: u16, b: u8) -> bool {
        match &self.nodes[node as usize] {
            Node::Object(_) => b == b'{',
            Node::Array { .. } => b == b'[',
            Node::String { .. } => b == b'"',
            Node::Number { .. } => b == b'-' || b.is_ascii_digit(),
            &Node::Literals { first, count } => self.literals[first as usize..][..count as usize].iter().any(|l| l[0] == b),
            Node::AnyOf(alts) => alts.iter().any(|&a| self.starts(a, b)),
        }
    }
}

/// A bound such as `minItems` of `o` (`default` where absent; saturating at u16::MAX,
/// past which counts saturate too).
fn count(o: &Map<String, Value>, name: &str, default: u16) -> Result<u16, String> {
    match o.get(name) {
        None => Ok(default),
        Some(v) => v.as_u64().map(|n| n.min(u16::MAX as u64) as u16).ok_or(format!("'{name}' must be a count")),
    }
}

/// Where an open container is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// After `{` or `[`.
    Open,
    /// After a key: `:`.
    Colon,
    /// Within a value.
    Value,
    /// After a value: `,` or the end.
    After,
    /// After `,` in an object: the next key.
    NextKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Frame {
    node: u16,
    /// Objects: the keys done.
    done: u16,
    phase: Phase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leaf {
    /// Between a container's parts.
    None,
    /// A value of this node comes next.
    Expect(u16),
    /// A string: `chars` characters read, `min` to `max` of them allowed (an escape
    /// counts one, a surrogate pair two).
    Str { s: StringState, chars: u16, min: u16, max: u16 },
    Num { n: Number, integer: bool },
    /// Literals `first ..` still matching (bits of `alive`), `at` bytes read; `key`: an
    /// object's key (a `:` follows it).
    Literal { first: u16, alive: u64, at: u8, key: bool },
}

/// A prefix of a JSON value of a [`Schema`]: what it has read, and what may follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchemaPrefix {
    stack: [Frame; MAX_DEPTH],
    depth: u8,
    leaf: Leaf,
    whitespace: u8,
    done: bool,
}

impl SchemaPrefix {
    /// The empty reply: the schema's root object comes, from its first byte.
    pub fn new() -> SchemaPrefix {
        SchemaPrefix { stack: [Frame { node: 0, done: 0, phase: Phase::Open }; MAX_DEPTH], depth: 0, leaf: Leaf::Expect(0), whitespace: 0, done: false }
    }

    /// Before one value of `node` (of a schema from [`Schema::compile_values`]);
    /// [`SchemaPrefix::may_end`] tells where it may end.
    pub fn value_of(node: u16) -> SchemaPrefix {
        SchemaPrefix { leaf: Leaf::Expect(node), ..SchemaPrefix::new() }
    }

    /// Whether no byte of the value was read ([`SchemaPrefix::value_of`]).
    pub fn is_expecting(&self) -> bool {
        self.depth == 0 && !self.done && matches!(self.leaf, Leaf::Expect(_))
    }

    /// Whether the value read so far is whole: complete, or a number or an enum's
    /// literal that the next byte may end.
    pub fn may_end(&self, s: &Schema) -> bool {
        match self.leaf {
            _ if self.done => true,
            _ if self.depth > 0 => false,
            Leaf::Num { n, .. } => n.complete(),
            Leaf::Literal { first, alive, at, .. } => (0..64).any(|i| alive >> i & 1 == 1 && s.literals[first as usize + i].len() == at as usize),
            _ => false,
        }
    }

    fn top(&mut self) -> &mut Frame {
        &mut self.stack[self.depth as usize - 1]
    }

    /// A value ended: the container it was in moves on, or the reply is complete.
    fn value_done(&mut self) -> bool {
        self.leaf = Leaf::None;
        if self.depth == 0 {
            self.done = true;
        } else {
            let f = self.top();
            // (An array's count is not read; a long one only saturates it.)
            f.done = f.done.saturating_add(1);
            f.phase = Phase::After;
        }
        true
    }

    fn close(&mut self) -> bool {
        self.depth -= 1;
        self.value_done()
    }

    /// A value of `node` starting with `b`.
    fn start(&mut self, s: &Schema, node: u16, b: u8) -> bool {
        match &s.nodes[node as usize] {
            Node::Object(_) | Node::Array { .. } => {
                let open = if matches!(s.nodes[node as usize], Node::Object(_)) { b'{' } else { b'[' };
                if b != open || self.depth as usize == MAX_DEPTH {
                    return false;
                }
                self.stack[self.depth as usize] = Frame { node, done: 0, phase: Phase::Open };
                self.depth += 1;
                self.leaf = Leaf::None;
                true
            }
            &Node::String { min, max } => {
                self.leaf = Leaf::Str { s: StringState::OPEN, chars: 0, min, max };
                b == b'"'
            }
            &Node::Number { integer } => {
                let n = match b {
                    b'-' => Number::Minus,
                    b'0' => Number::Zero,
                    b'1'..=b'9' => Number::Int,
                    _ => return false,
                };
                self.leaf = Leaf::Num { n, integer };
                true
            }
            &Node::Literals { first, count } => {
                self.leaf = Leaf::Literal { first, alive: u64::MAX >> (64 - count as u32), at: 0, key: false };
                self.feed(s, b)
            }
            Node::AnyOf(alts) => match alts.iter().find(|&&a| s.starts(a, b)) {
                Some(&a) => self.start(s, a, b),
                None => false,
            },
        }
    }

    /// The literal being matched ended: a key's colon comes next (`matched`: its bit
    /// among the keys tried, counted from the frame's next key), or the value is done.
    fn literal_done(&mut self, key: bool, matched: u64) -> bool {
        if key {
            self.leaf = Leaf::None;
            let f = self.top();
            f.done += matched.trailing_zeros() as u16;
            f.phase = Phase::Colon;
            true
        } else {
            self.value_done()
        }
    }

    fn feed(&mut self, s: &Schema, b: u8) -> bool {
        if self.done {
            return false;
        }
        let between = match self.leaf {
            Leaf::None => true,
            // Not before the reply's first byte.
            Leaf::Expect(_) => self.depth > 0,
            _ => false,
        };
        if between && is_space(b) {
            return take_space(&mut self.whitespace, b);
        }
        if !end_space(&mut self.whitespace) {
            return false;
        }
        match self.leaf {
            Leaf::Expect(node) => self.start(s, node, b),
            Leaf::Str { s: mut st, chars, min, max } => {
                // Between characters: the closing quote once `min` are in, another
                // character while fewer than `max` are.
                if st.between_chars() && (if b == b'"' { chars < min } else { chars >= max }) {
                    return false;
                }
                match st.feed(b) {
                    StringStep::More => {
                        let chars = chars.saturating_add(st.between_chars() as u16);
                        self.leaf = Leaf::Str { s: st, chars, min, max };
                        true
                    }
                    StringStep::End => self.value_done(),
                    StringStep::Bad => false,
                }
            }
            Leaf::Num { n, integer } => match n.next(b).filter(|m| !integer || !matches!(m, Number::Dot | Number::Exp)) {
                Some(n) => {
                    self.leaf = Leaf::Num { n, integer };
                    true
                }
                // The byte after a number belongs to what follows it.
                None if n.complete() => self.value_done() && self.feed(s, b),
                None => false,
            },
            Leaf::Literal { first, alive, at, key } => {
                let (mut next, mut ended, mut longer) = (0u64, false, false);
                for i in 0..64 {
                    if alive >> i & 1 == 1 {
                        let l = &s.literals[first as usize + i];
                        ended |= l.len() == at as usize;
                        if l.get(at as usize) == Some(&b) {
                            next |= 1 << i;
                            longer |= l.len() > at as usize + 1;
                        }
                    }
                }
                if next != 0 {
                    self.leaf = Leaf::Literal { first, alive: next, at: at + 1, key };
                    // Complete once no matching literal goes on.
                    if !longer {
                        return self.literal_done(key, next);
                    }
                    true
                } else if ended {
                    // A shorter literal (a number of the enum) ended before this byte
                    // (keys end with their quote: never here).
                    self.literal_done(key, 0) && self.feed(s, b)
                } else {
                    false
                }
            }
            Leaf::None => self.structural(s, b),
        }
    }

    /// `b` between the parts of the innermost open container.
    fn structural(&mut self, s: &Schema, b: u8) -> bool {
        let f = *self.top();
        // An object's `done`: the index of the first key that may still come.
        let rest = |keys: &[Key]| keys.get(f.done as usize..).unwrap_or_default().iter().all(|k| !k.required);
        match (&s.nodes[f.node as usize], f.phase, b) {
            (Node::Object(keys), Phase::Open, b'}') if rest(keys) => self.close(),
            (Node::Object(keys), Phase::Open | Phase::NextKey, b'"') if (f.done as usize) < keys.len() => {
                // The keys from the next one up to the next required one, from the
                // opening quote on.
                let from = f.done as usize;
                let count = keys[from..].iter().position(|k| k.required).map_or(keys.len() - from, |p| p + 1);
                self.leaf = Leaf::Literal { first: keys[from].literal, alive: u64::MAX >> (64 - count), at: 1, key: true };
                true
            }
            (Node::Object(keys), Phase::Colon, b':') => {
                self.top().phase = Phase::Value;
                self.leaf = Leaf::Expect(keys[f.done as usize].value);
                true
            }
            (Node::Object(keys), Phase::After, b',') if (f.done as usize) < keys.len() => {
                self.top().phase = Phase::NextKey;
                true
            }
            (Node::Object(keys), Phase::After, b'}') if rest(keys) => self.close(),
            (&Node::Array { min, .. }, Phase::Open | Phase::After, b']') if f.done >= min => self.close(),
            (&Node::Array { items, max, .. }, Phase::Open, _) if max > 0 => {
                self.top().phase = Phase::Value;
                self.start(s, items, b)
            }
            (&Node::Array { items, max, .. }, Phase::After, b',') if f.done < max => {
                self.top().phase = Phase::Value;
                self.leaf = Leaf::Expect(items);
                true
            }
            _ => false,
        }
    }
}

impl Default for SchemaPrefix {
    fn default() -> SchemaPrefix {
        SchemaPrefix::new()
    }
}

impl Grammar for SchemaPrefix {
    type Rules = Schema;

    fn feed(&mut self, s: &Schema, b: u8) -> bool {
        SchemaPrefix::feed(self, s, b)
    }

    fn is_complete(&self) -> bool {
        self.done
    }

    fn in_plain_string(&self) -> bool {
        // (Not under a `maxLength`: a long token could pass it.)
        matches!(self.leaf, Leaf::Str { s, max: u16::MAX, .. } if s.between_chars())
    }

    fn skips_whitespace(&self) -> bool {
        !self.done && (self.leaf == Leaf::None || matches!(self.leaf, Leaf::Expect(_)) && self.depth > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::compile(&json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "who"},
                "age": {"type": "integer"},
                "score": {"type": ["number", "null"]},
                "tags": {"type": "array", "items": {"enum": ["a", "ab", 1, 10, true]}},
                "ok": {"type": "boolean"},
                "inner": {"type": "object", "properties": {"x": {"const": "y"}}, "required": ["x"], "additionalProperties": false},
                "none": {"type": "object", "properties": {}}
            },
            "required": ["name", "age", "score", "tags", "ok", "inner", "none"],
            "additionalProperties": false
        }))
        .unwrap()
    }

    fn accepts(s: &Schema, text: &str) -> Option<SchemaPrefix> {
        SchemaPrefix::new().after(s, text.as_bytes())
    }

    #[test]
    fn instances_are_complete_and_every_prefix_continues() {
        let s = schema();
        let instances = [
            r#"{"name": "Ann", "age": 41, "score": 2.5e3, "tags": ["ab", 10, true, "a", 1], "ok": false, "inner": {"x": "y"}, "none": {}}"#,
            r#"{"name":"","age":-0,"score":null,"tags":[],"ok":true,"inner":{"x":"y"},"none":{ }}"#,
            "{\n  \"name\": \"\\u00e9\\n\u{1F600}\",\n  \"age\": 7,\n  \"score\": -1,\n  \"tags\": [1 , 10],\n  \"ok\": true,\n  \"inner\": {\"x\": \"y\"},\n  \"none\": {}\n}",
        ];
        for text in instances {
            assert!(serde_json::from_str::<Value>(text).is_ok(), "{text}");
            let p = accepts(&s, text).unwrap_or_else(|| panic!("{text} refused"));
            assert!(p.is_complete(), "{text}");
            for cut in 1..text.len() {
                if !text.is_char_boundary(cut) {
                    continue;
                }
                let p = accepts(&s, &text[..cut]).unwrap_or_else(|| panic!("{text}: prefix {cut} refused"));
                assert!(!p.is_complete(), "{text}: complete after {cut}");
                assert_eq!(p.after(&s, &text.as_bytes()[cut..]).map(|p| p.is_complete()), Some(true), "{text} split at {cut}");
            }
        }
    }

    #[test]
    fn what_breaks_the_schema_is_refused_where_it_does() {
        let s = schema();
        let ok = r#"{"name": "Ann", "age": 41, "score": null, "tags": [], "ok": false, "inner": {"x": "y"}, "none": {}}"#;
        assert!(accepts(&s, ok).is_some_and(|p| p.is_complete()));
        // (a change to `ok`, the prefix that must still be taken)
        let cases = [
            (r#"{"age""#, r#"{""#),                       // keys in `required` order
            (r#"{"nam": "#, r#"{"nam"#),                 // a key exactly
            (r#"{"name" , "#, r#"{"name" "#),            // the colon
            (r#"{"name": 5"#, r#"{"name": "#),           // a string
            (r#"{"name": "A", "age": 4.5"#, r#"{"name": "A", "age": 4"#), // an integer
            (r#"{"name": "A", "age": 4e1"#, r#"{"name": "A", "age": 4"#),
            (r#"{"name": "A", "age": 4, "score": "1""#, r#"{"name": "A", "age": 4, "score": "#),
            (r#"{"name": "A", "age": 4, "score": nul}"#, r#"{"name": "A", "age": 4, "score": nul"#),
            (r#"{"name": "A", "age": 4, "score": 1, "tags": ["b"]"#, r#"{"name": "A", "age": 4, "score": 1, "tags": [""#),
            (r#"{"name": "A", "age": 4, "score": 1, "tags": [100]"#, r#"{"name": "A", "age": 4, "score": 1, "tags": [10"#),
            (r#"{"name": "A", "age": 4, "score": 1, "tags": [tru]"#, r#"{"name": "A", "age": 4, "score": 1, "tags": [tru"#),
            (r#"{"name": "A", "age": 4, "score": 1, "tags": [], "ok": 1"#, r#"{"name": "A", "age": 4, "score": 1, "tags": [], "ok": "#),
            (r#"{"name": "A", "age": 4, "score": 1, "tags": [], "ok": true}"#, r#"{"name": "A", "age": 4, "score": 1, "tags": [], "ok": true"#), // keys missing
            (r#"{"name": "A", "age": 4, "score": 1, "tags": [], "ok": true, "inner": {"x": "z"#, r#"{"name": "A", "age": 4, "score": 1, "tags": [], "ok": true, "inner": {"x": ""#),
            (r#"{"name": "A", "age": 4, "score": 1, "tags": [], "ok": true, "inner": {"x": "y", "#, r#"{"name": "A", "age": 4, "score": 1, "tags": [], "ok": true, "inner": {"x": "y""#), // no more keys
            (r#"{"name": "A", "age": 4, "score": 1, "tags": [], "ok": true, "inner": {"x": "y"}, "none": {"a"#, r#"{"name": "A", "age": 4, "score": 1, "tags": [], "ok": true, "inner": {"x": "y"}, "none": {"#),
            (" {", ""), // from the first byte
        ];
        for (bad, good) in cases {
            assert!(bad.starts_with(good), "{bad} / {good}");
            assert!(good.is_empty() || accepts(&s, good).is_some(), "{good:?} refused");
            assert!(accepts(&s, bad).is_none(), "{bad:?} accepted");
        }
        let done = accepts(&s, ok).unwrap();
        assert!(done.after(&s, b" ").is_none() && done.after(&s, b"}").is_none(), "nothing after the object");
    }

    /// xorshift64: a different stream per seed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// A random schema of the subset, `depth` levels at most, and an instance of it.
    fn random_schema(r: &mut Rng, depth: u32) -> Value {
        let pick = if depth == 0 { 2 + r.below(5) } else { r.below(7) };
        match pick {
            0 => {
                let names: Vec<String> = (0..r.below(4)).map(|i| format!("k{i}{}", ["", "é", "\"q\"", " x"][r.below(4) as usize])).collect();
                let props: Map<String, Value> = names.iter().map(|n| (n.clone(), random_schema(r, depth - 1))).collect();
                // Some required, in a shuffled order; the rest optional.
                let mut required: Vec<&String> = names.iter().filter(|_| r.below(3) > 0).collect();
                for i in (1..required.len()).rev() {
                    required.swap(i, r.below(i as u64 + 1) as usize);
                }
                json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
            }
            1 => json!({"type": "array", "items": random_schema(r, depth - 1)}),
            2 => json!({"type": "string"}),
            3 => {
                let t = ["integer", "null"][r.below(2) as usize];
                json!({"type": t})
            }
            4 => json!({"type": ["number", "null"]}),
            5 => json!({"type": "boolean"}),
            _ => json!({"enum": ["a", "ab", 1, 10, -2.5, true, null]}),
        }
    }

    fn random_instance(r: &mut Rng, schema: &Value) -> Value {
        if let Some(e) = schema.get("enum") {
            return e[r.below(e.as_array().unwrap().len() as u64) as usize].clone();
        }
        match &schema["type"] {
            Value::String(t) if t == "object" => {
                let props = schema["properties"].as_object().unwrap();
                let required = schema["required"].as_array().unwrap();
                let mut out = Map::new();
                for (name, value) in props {
                    if required.iter().any(|k| k == name) || r.below(2) == 0 {
                        out.insert(name.to_string(), random_instance(r, value));
                    }
                }
                Value::Object(out)
            }
            Value::String(t) if t == "array" => Value::Array((0..r.below(4)).map(|_| random_instance(r, &schema["items"])).collect()),
            Value::String(t) if t == "string" => Value::from(["", "x", "a\"b\\c\n", "日本", "\u{1F600}"][r.below(5) as usize]),
            Value::String(t) if t == "integer" => json!(r.below(2000) as i64 - 1000),
            Value::String(t) if t == "null" => Value::Null,
            Value::String(_) => json!(r.below(2) == 1),
            Value::Array(_) if r.below(3) == 0 => Value::Null,
            _ => json!((r.below(10_000) as f64 - 5000.0) / 64.0),
        }
    }

    /// Random schemas of the subset and random instances of them, compact and pretty:
    /// every instance is complete and every prefix continues; random edits of an
    /// instance are refused or accepted without a panic, and whatever the automaton
    /// calls complete parses.
    #[test]
    fn random_schemas_take_their_instances() {
        let mut r = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..300 {
            let schema = json!({"type": "object", "properties": {"root": random_schema(&mut r, 4)}, "required": ["root"], "additionalProperties": false});
            let s = Schema::compile(&schema).unwrap_or_else(|e| panic!("{schema}: {e}"));
            let value = random_instance(&mut r, &schema);
            // serde_json without preserve_order sorts keys: write them in `required` order,
            // then the others given.
            fn write(v: &Value, schema: &Value, pretty: bool, out: &mut String) {
                match (v, schema.get("required")) {
                    (Value::Object(o), Some(Value::Array(required))) => {
                        let required: Vec<&str> = required.iter().map(|k| k.as_str().unwrap()).collect();
                        let order: Vec<&str> = required.iter().copied().chain(o.keys().map(String::as_str).filter(|k| !required.contains(k))).collect();
                        out.push('{');
                        for (i, &k) in order.iter().enumerate() {
                            out.push_str(if i > 0 { "," } else { "" });
                            out.push_str(if pretty { "\n  " } else { "" });
                            out.push_str(&serde_json::to_string(k).unwrap());
                            out.push_str(if pretty { ": " } else { ":" });
                            write(&o[k], &schema["properties"][k], pretty, out);
                        }
                        out.push_str(if pretty && !order.is_empty() { "\n}" } else { "}" });
                    }
                    (Value::Array(items), _) => {
                        out.push('[');
                        for (i, item) in items.iter().enumerate() {
                            out.push_str(if i > 0 { ", " } else { "" });
                            write(item, &schema["items"], pretty, out);
                        }
                        out.push(']');
                    }
                    _ => out.push_str(&serde_json::to_string(v).unwrap()),
                }
            }
            for pretty in [false, true] {
                let mut text = String::new();
                write(&value, &schema, pretty, &mut text);
                let bytes = text.as_bytes();
                assert!(accepts(&s, &text).is_some_and(|p| p.is_complete()), "{schema}\n{text}");
                for cut in 1..bytes.len() {
                    let p = SchemaPrefix::new().after(&s, &bytes[..cut]).unwrap_or_else(|| panic!("{text}: prefix {cut} refused"));
                    assert!(!p.is_complete(), "{text}: complete after {cut}");
                }
                for _ in 0..20 {
                    let mut edited = bytes.to_vec();
                    let at = r.below(edited.len() as u64) as usize;
                    match r.below(3) {
                        0 => edited[at] = b"{}[]:,\" 0-1a\\e."[r.below(15) as usize],
                        1 => {
                            edited.remove(at);
                        }
                        _ => edited.insert(at, b"{}[]:,\" 0-1a\\e."[r.below(15) as usize]),
                    }
                    if SchemaPrefix::new().after(&s, &edited).is_some_and(|p| p.is_complete()) {
                        // (serde_json refuses numbers past f64's range, which JSON allows.)
                        let parsed = serde_json::from_slice::<Value>(&edited);
                        let out_of_range = parsed.as_ref().is_err_and(|e| e.to_string().contains("out of range"));
                        assert!(parsed.is_ok() || out_of_range, "{:?} complete here, not JSON", String::from_utf8_lossy(&edited));
                    }
                }
            }
        }
    }

    #[test]
    fn optional_properties_come_after_the_required_ones_in_order_or_not_at_all() {
        // Required: b then d; optional: a, c (their names' order), after them.
        let s = Schema::compile(&json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}, "c": {"type": "boolean"}, "d": {"type": "null"}},
            "required": ["b", "d"]}))
        .unwrap();
        for ok in [r#"{"b": 1, "d": null}"#, r#"{"b": 1, "d": null, "a": "x"}"#, r#"{"b": 1, "d": null, "c": true}"#, r#"{"b":1,"d":null,"a":"","c":false}"#] {
            assert!(accepts(&s, ok).is_some_and(|p| p.is_complete()), "{ok}");
        }
        for bad in [r#"{"a""#, r#"{"d""#, r#"{"b": 1}"#, r#"{"b": 1, "b""#, r#"{"b": 1, "d": null, "c": true, "a""#, r#"{"b": 1, "d": null, "e""#, r#"{}"#] {
            assert!(accepts(&s, bad).is_none(), "{bad}");
        }
        // Nothing required: the empty object, any ordered subset.
        let s = Schema::compile(&json!({"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}})).unwrap();
        for ok in ["{}", r#"{"y": 2}"#, r#"{"x": 1, "y": 2}"#] {
            assert!(accepts(&s, ok).is_some_and(|p| p.is_complete()), "{ok}");
        }
        assert!(accepts(&s, r#"{"y": 2, "x""#).is_none());
    }

    #[test]
    fn arrays_hold_min_to_max_items() {
        let s = Schema::compile(&json!({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
            "none": {"type": "array", "items": {"type": "integer"}, "maxItems": 0}}, "required": ["a", "none"]}))
        .unwrap();
        for ok in [r#"{"a": [1], "none": []}"#, r#"{"a": [1, 2, 3], "none": [ ]}"#] {
            assert!(accepts(&s, ok).is_some_and(|p| p.is_complete()), "{ok}");
        }
        for bad in [r#"{"a": []"#, r#"{"a": [1, 2, 3,"#, r#"{"a": [1], "none": [1"#] {
            assert!(accepts(&s, bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn strings_hold_min_to_max_characters() {
        let s = Schema::compile(&json!({"type": "object", "properties": {"code": {"type": "string", "minLength": 2, "maxLength": 3}}, "required": ["code"]})).unwrap();
        for ok in [r#"{"code": "ab"}"#, r#"{"code": "abc"}"#, r#"{"code": "é\n"}"#, r#"{"code": "\u00e9ü😀"}"#] {
            assert!(accepts(&s, ok).is_some_and(|p| p.is_complete()), "{ok}");
        }
        for bad in [r#"{"code": "a""#, r#"{"code": "abcd"#, r#"{"code": "ab\n\t"#, r#"{"code": """#] {
            assert!(accepts(&s, bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn refs_name_defs_once_and_may_recurse() {
        let point = json!({"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"]});
        let s = Schema::compile(&json!({"type": "object", "properties": {"p": {"$ref": "#/$defs/Point"}, "q": {"$ref": "#/definitions/Point"}, "r": {"$ref": "#/$defs/Point"}},
            "required": ["p", "q", "r"], "$defs": {"Point": point}, "definitions": {"Point": point}}))
        .unwrap();
        // Point compiled once per section: two objects of two keys, besides the root's.
        assert_eq!(s.nodes.iter().filter(|n| matches!(n, Node::Object(k) if k.len() == 2)).count(), 2);
        assert!(accepts(&s, r#"{"p": {"x": 1, "y": 2}, "q": {"x": 3, "y": 4}, "r": {"x": 5, "y": 6}}"#).is_some_and(|p| p.is_complete()));
        assert!(accepts(&s, r#"{"p": {"x": 1, "y": "2"#).is_none());
        // A tree of its own kind, as Pydantic writes a recursive model (its root a $ref).
        let tree = Schema::compile(&json!({"$ref": "#/$defs/Node", "$defs": {"Node": {"type": "object",
            "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}, "required": ["v", "kids"]}}}))
        .unwrap();
        assert!(accepts(&tree, r#"{"v": 1, "kids": [{"v": 2, "kids": []}, {"v": 3, "kids": [{"v": 4, "kids": []}]}]}"#).is_some_and(|p| p.is_complete()));
        // As deep as the automaton's stack, and no deeper (refused, not a panic).
        let deep = |n: usize| format!("{}{{\"v\": 0, \"kids\": []}}{}", "{\"v\": 0, \"kids\": [".repeat(n), "]}".repeat(n));
        assert!(accepts(&tree, &deep(MAX_DEPTH / 2 - 1)).is_some_and(|p| p.is_complete()));
        assert!(accepts(&tree, &deep(MAX_DEPTH)).is_none());
        // `oneOf` as `anyOf`, `allOf` of one schema.
        let s = Schema::compile(&json!({"type": "object", "properties": {"a": {"oneOf": [{"type": "integer"}, {"type": "null"}]},
            "b": {"allOf": [{"$ref": "#/$defs/P"}], "description": "a point"}}, "required": ["a", "b"], "$defs": {"P": point}}))
        .unwrap();
        assert!(accepts(&s, r#"{"a": null, "b": {"x": 1, "y": 2}}"#).is_some_and(|p| p.is_complete()));
        assert!(accepts(&s, r#"{"a": "1""#).is_none());
        // The root itself ('#').
        let list = Schema::compile(&json!({"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}}, "required": ["next"]})).unwrap();
        assert!(accepts(&list, r#"{"next": {"next": {"next": null}}}"#).is_some_and(|p| p.is_complete()));
    }

    #[test]
    fn unsupported_schemas_are_refused_by_name() {
        let cases = [
            (json!({"type": "string"}), "must describe an object"),
            (json!({"type": "object", "properties": {}, "additionalProperties": true}), "additionalProperties"),
            (json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "x+"}}, "required": ["a"]}), "'pattern'"),
            (json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "required": ["a"]}), "'$ref' \"#/$defs/x\" is not"),
            (json!({"type": "object", "properties": {"a": {"$ref": "https://x/y.json"}}}), "is not '#'"),
            (json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/x/y"}}, "$defs": {"x": {"type": "string"}}}), "is not '#'"),
            (json!({"type": "object", "properties": {"a": {"$ref": 5}}}), "'$ref' must be a string"),
            (json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {"$ref": "#/$defs/x"}}}), "comes back to itself"),
            (json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/y"}]}, "y": {"$ref": "#/$defs/x"}}}), "comes back to itself"),
            (json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": {"type": "string", "format": "date"}}}), "'format'"),
            (json!({"type": "object", "properties": (0..65).map(|i| (format!("k{i}"), json!({"type": "null"}))).collect::<Map<String, Value>>()}), "more than 64 properties"),
            (json!({"type": "object", "properties": {"a": {"type": "null"}}, "required": ["a", "a"]}), "names 'a' twice"),
            (json!({"type": "object", "required": ["a"]}), "not in 'properties'"),
            (json!({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"enum": ["x"]}]}}, "required": ["a"]}), "start differently"),
            (json!({"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}, {"enum": ["x"]}]}}}), "start differently"),
            (json!({"type": "object", "properties": {"a": {"allOf": [{"type": "string"}, {"type": "null"}]}}}), "'allOf' is taken with one schema only"),
            (json!({"type": "object", "properties": {"a": {"enum": [[1]]}}, "required": ["a"]}), "strings, numbers"),
            (json!({"type": "object", "properties": {"a": {"type": "date"}}, "required": ["a"]}), "'date'"),
            (json!({"type": "object", "properties": {"a": {"type": "array"}}, "required": ["a"]}), "'items'"),
            (json!({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "null"}, "minItems": 3, "maxItems": 2}}}), "more than 'maxItems'"),
            (json!({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "null"}, "minItems": -1}}}), "'minItems' must be a count"),
            (json!({"type": "object", "properties": {"a": {"type": "string", "minLength": 2, "maxLength": 1}}}), "more than 'maxLength'"),
            (json!({"type": "object", "properties": {"a": {}}, "required": ["a"]}), "needs 'type'"),
            (json!([1]), "must be an object"),
        ];
        for (schema, needle) in cases {
            let e = Schema::compile(&schema).expect_err(&schema.to_string());
            assert!(e.contains(needle), "{schema}: {e}");
        }
        // 32 objects nested: the most the automaton holds, so the most compiled.
        let nested = |levels: usize| {
            let mut schema = json!({"type": "object", "properties": {}});
            for _ in 1..levels {
                schema = json!({"type": "object", "properties": {"a": schema}, "required": ["a"]});
            }
            schema
        };
        let s = Schema::compile(&nested(MAX_DEPTH)).unwrap();
        let instance = format!("{}{{}}{}", "{\"a\": ".repeat(MAX_DEPTH - 1), "}".repeat(MAX_DEPTH - 1));
        assert!(accepts(&s, &instance).is_some_and(|p| p.is_complete()), "{instance}");
        assert!(Schema::compile(&nested(MAX_DEPTH + 1)).unwrap_err().contains("deep"));
    }
}
