//! A Dockerfile parser: instructions with the line they start on, line continuations
//! (`\` at the end of a line), comments, the shell and JSON (exec) forms of `RUN`, `CMD`
//! and `ENTRYPOINT`, `KEY=VALUE` lists with quotes (`ENV`, `LABEL`) and the old
//! `ENV KEY VALUE` form. Anything else is an error naming its line.

use crate::ImageError;

/// A command in shell form (run by `/bin/sh -c`) or exec form (a JSON array).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `RUN echo hi`.
    Shell(String),
    /// `RUN ["echo", "hi"]`.
    Exec(Vec<String>),
}

impl Command {
    /// The argument vector: `/bin/sh -c TEXT` for the shell form.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            Command::Exec(v) => v.clone(),
        }
    }
}

/// One Dockerfile instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instruction {
    /// `FROM IMAGE [AS NAME]` (`scratch` for an empty image).
    From {
        /// The image.
        image: String,
        /// The stage name (kept, unused: one stage only).
        alias: Option<String>,
    },
    /// `RUN`.
    Run(Command),
    /// `COPY SRC... DEST`.
    Copy {
        /// Sources in the context.
        sources: Vec<String>,
        /// Destination in the image.
        dest: String,
    },
    /// `ADD SRC... DEST` (a local tar archive is unpacked).
    Add {
        /// Sources in the context.
        sources: Vec<String>,
        /// Destination in the image.
        dest: String,
    },
    /// `ENV K=V ...` or `ENV K V`.
    Env(Vec<(String, String)>),
    /// `WORKDIR DIR`.
    Workdir(String),
    /// `USER USER[:GROUP]`.
    User(String),
    /// `EXPOSE PORT[/PROTO]...`.
    Expose(Vec<String>),
    /// `CMD`.
    Cmd(Command),
    /// `ENTRYPOINT`.
    Entrypoint(Command),
    /// `LABEL K=V ...`.
    Label(Vec<(String, String)>),
    /// `ARG NAME[=DEFAULT]`.
    Arg {
        /// The name.
        name: String,
        /// Its default.
        default: Option<String>,
    },
}

/// An instruction and where it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The line it starts on (1-based).
    pub line: usize,
    /// The instruction as written (continuations joined).
    pub text: String,
    /// What it says.
    pub instruction: Instruction,
}

/// The most bytes a Dockerfile may have.
pub const MAX_DOCKERFILE: usize = 1 << 20;

fn err(line: usize, why: impl Into<String>) -> ImageError {
    ImageError::Dockerfile {
        line,
        why: why.into(),
    }
}

/// Parses a whole Dockerfile.
pub fn parse(text: &str) -> Result<Vec<Step>, ImageError> {
    if text.len() > MAX_DOCKERFILE {
        return Err(ImageError::TooLarge {
            what: "a Dockerfile",
            limit: MAX_DOCKERFILE as u64,
        });
    }
    let mut steps = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_none()) {
            continue;
        }
        let (body, more) = match trimmed.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (trimmed, false),
        };
        let (start, mut acc) = pending.take().unwrap_or((n, String::new()));
        if !acc.is_empty() && !body.is_empty() {
            acc.push(' ');
        }
        acc.push_str(body.trim());
        if more {
            pending = Some((start, acc));
        } else if !acc.trim().is_empty() {
            steps.push(instruction(start, &acc)?);
        }
    }
    if let Some((start, acc)) = pending {
        if !acc.trim().is_empty() {
            steps.push(instruction(start, &acc)?);
        }
    }
    if !steps
        .iter()
        .any(|s| matches!(s.instruction, Instruction::From { .. }))
    {
        return Err(err(
            steps.last().map_or(1, |s| s.line),
            "no FROM instruction",
        ));
    }
    for s in &steps {
        match s.instruction {
            Instruction::From { .. } => break,
            Instruction::Arg { .. } => {}
            _ => return Err(err(s.line, "the first instruction must be FROM (or ARG)")),
        }
    }
    let mut froms = steps
        .iter()
        .filter(|s| matches!(s.instruction, Instruction::From { .. }));
    if let Some(second) = froms.nth(1) {
        return Err(err(second.line, "multi-stage builds are not supported"));
    }
    Ok(steps)
}

/// A JSON array of strings, or `None` when `args` is not one (then it is shell form).
fn json_array(args: &str) -> Option<Vec<String>> {
    if !args.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(args).ok()
}

fn command(line: usize, args: &str) -> Result<Command, ImageError> {
    match json_array(args) {
        Some(v) if v.is_empty() => Err(err(line, "an empty command")),
        Some(v) => Ok(Command::Exec(v)),
        None => Ok(Command::Shell(args.to_string())),
    }
}

/// Splits `s` into words at unquoted whitespace; quotes (`"` with `\` escapes, `'`
/// literal) group and are removed; `\` outside quotes escapes the next character.
pub fn words(line: usize, s: &str) -> Result<Vec<String>, ImageError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err(err(line, "an unterminated \" quote")),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\' | '$')) => cur.push(e),
                            Some(e) => {
                                cur.push('\\');
                                cur.push(e);
                            }
                            None => return Err(err(line, "an unterminated \" quote")),
                        },
                        Some(c) => cur.push(c),
                    }
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err(err(line, "an unterminated ' quote")),
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(e) = chars.next() {
                    cur.push(e);
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `K=V` words (ENV, LABEL); `legacy` allows `K V...` (ENV's old form).
fn pairs(line: usize, args: &str, legacy: bool) -> Result<Vec<(String, String)>, ImageError> {
    let first = args.split_whitespace().next().unwrap_or("");
    if legacy && !first.contains('=') {
        let value = args[first.len()..].trim();
        if value.is_empty() {
            return Err(err(line, format!("ENV {first} has no value")));
        }
        check_key(line, first)?;
        return Ok(vec![(first.to_string(), value.to_string())]);
    }
    let mut out = Vec::new();
    for w in words(line, args)? {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| err(line, format!("{w:?} is not KEY=VALUE")))?;
        check_key(line, k)?;
        out.push((k.to_string(), v.to_string()));
    }
    if out.is_empty() {
        return Err(err(line, "no KEY=VALUE"));
    }
    Ok(out)
}

fn check_key(line: usize, k: &str) -> Result<(), ImageError> {
    if k.is_empty() || k.contains(['\0', '=']) {
        return Err(err(line, format!("bad name {k:?}")));
    }
    Ok(())
}

/// COPY/ADD arguments: flags refused, JSON or word form, at least a source and a
/// destination.
fn copy_args(line: usize, kw: &str, args: &str) -> Result<(Vec<String>, String), ImageError> {
    let mut v = match json_array(args) {
        Some(v) => v,
        None => words(line, args)?,
    };
    if let Some(flag) = v.iter().find(|w| w.starts_with("--")) {
        return Err(err(line, format!("{kw} {flag}: flags are not supported")));
    }
    if v.len() < 2 {
        return Err(err(line, format!("{kw} needs a source and a destination")));
    }
    let dest = v.pop().unwrap_or_default();
    if v.iter()
        .chain([&dest])
        .any(|s| s.is_empty() || s.contains('\0'))
    {
        return Err(err(line, format!("{kw}: an empty path")));
    }
    Ok((v, dest))
}

/// One instruction from its joined text.
fn instruction(line: usize, text: &str) -> Result<Step, ImageError> {
    let text = text.trim();
    let (kw, args) = match text.split_once(char::is_whitespace) {
        Some((k, a)) => (k, a.trim()),
        None => (text, ""),
    };
    let upper = kw.to_ascii_uppercase();
    if args.is_empty() {
        return Err(err(line, format!("{upper} needs arguments")));
    }
    let one = |what: &str| -> Result<String, ImageError> {
        let w = words(line, args)?;
        match w.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(err(line, format!("{upper} takes one {what}"))),
        }
    };
    let instruction = match upper.as_str() {
        "FROM" => {
            let w = words(line, args)?;
            match w.as_slice() {
                [f, ..] if f.starts_with("--") => {
                    return Err(err(line, format!("FROM {f}: flags are not supported")))
                }
                [image] => Instruction::From {
                    image: image.clone(),
                    alias: None,
                },
                [image, as_, alias] if as_.eq_ignore_ascii_case("as") => Instruction::From {
                    image: image.clone(),
                    alias: Some(alias.clone()),
                },
                _ => return Err(err(line, "FROM takes IMAGE [AS NAME]")),
            }
        }
        "RUN" => {
            if args.starts_with("--") {
                return Err(err(line, "RUN flags are not supported"));
            }
            Instruction::Run(command(line, args)?)
        }
        "CMD" => Instruction::Cmd(command(line, args)?),
        "ENTRYPOINT" => Instruction::Entrypoint(command(line, args)?),
        "COPY" => {
            let (sources, dest) = copy_args(line, "COPY", args)?;
            Instruction::Copy { sources, dest }
        }
        "ADD" => {
            let (sources, dest) = copy_args(line, "ADD", args)?;
            if let Some(u) = sources
                .iter()
                .find(|s| s.contains("://") || s.starts_with("git@"))
            {
                return Err(err(line, format!("ADD {u}: URLs are not supported")));
            }
            Instruction::Add { sources, dest }
        }
        "ENV" => Instruction::Env(pairs(line, args, true)?),
        "LABEL" => Instruction::Label(pairs(line, args, false)?),
        "WORKDIR" => Instruction::Workdir(one("directory")?),
        "USER" => Instruction::User(one("user")?),
        "EXPOSE" => {
            let ports = words(line, args)?;
            for p in &ports {
                let (num, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                let ok_num = num
                    .split_once('-')
                    .map_or(num.parse::<u16>().is_ok(), |(a, b)| {
                        a.parse::<u16>().is_ok() && b.parse::<u16>().is_ok()
                    });
                if !ok_num || !["tcp", "udp", "sctp"].contains(&proto.to_ascii_lowercase().as_str())
                {
                    return Err(err(line, format!("EXPOSE {p}: not PORT[/tcp|udp|sctp]")));
                }
            }
            Instruction::Expose(ports)
        }
        "ARG" => {
            let w = one("NAME[=DEFAULT]")?;
            let (name, default) = match w.split_once('=') {
                Some((n, d)) => (n.to_string(), Some(d.to_string())),
                None => (w, None),
            };
            check_key(line, &name)?;
            Instruction::Arg { name, default }
        }
        "MAINTAINER" | "ONBUILD" | "STOPSIGNAL" | "HEALTHCHECK" | "SHELL" | "VOLUME" => {
            return Err(err(line, format!("{upper} is not supported")))
        }
        _ => return Err(err(line, format!("unknown instruction {kw:?}"))),
    };
    Ok(Step {
        line,
        text: text.to_string(),
        instruction,
    })
}

/// `$NAME`, `${NAME}` and `${NAME:-DEFAULT}` replaced from `vars` (missing: empty);
/// `\$` is a literal `$`.
pub fn substitute(s: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'$') => {
                out.push('$');
                chars.next();
            }
            '$' if chars.peek() == Some(&'{') => {
                chars.next();
                let mut inner = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    inner.push(c);
                }
                if !closed {
                    out.push_str("${");
                    out.push_str(&inner);
                    continue;
                }
                let (name, default) = match inner.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (inner.as_str(), None),
                };
                match (vars(name).filter(|v| !v.is_empty()), default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => {}
                }
            }
            '$' if chars.peek().is_some_and(|c| is_name(*c)) => {
                let mut name = String::new();
                while let Some(c) = chars.peek().copied().filter(|c| is_name(*c)) {
                    name.push(c);
                    chars.next();
                }
                out.push_str(&vars(&name).unwrap_or_default());
            }
            c => out.push(c),
        }
    }
    out
}
