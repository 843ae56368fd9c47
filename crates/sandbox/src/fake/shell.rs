//! The commands a fake sandbox runs, against its in-memory files: `true`, `false`, `echo ARGS`,
//! `cat PATH...` and `sh -c SCRIPT`, where the script is `;`-separated steps, each one of those
//! commands (optionally with `> PATH` or `>> PATH` after an `echo` or `cat`) or `exit [N]`.
//! Words may be quoted with `'` or `"`. A program is known by its last path component
//! (`/bin/echo` is `echo`); anything else exits 127 saying so on stderr. Nothing reads stdin.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A sandbox's files: absolute path to contents (directories are implied).
pub(super) type Files = BTreeMap<String, Vec<u8>>;

/// What a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Ran {
    /// Bytes written to stdout.
    pub stdout: Vec<u8>,
    /// Bytes written to stderr.
    pub stderr: Vec<u8>,
    /// Exit status.
    pub code: i32,
}

/// Runs `argv` against `files`.
pub(super) fn run(argv: &[String], files: &mut Files) -> Ran {
    let mut ran = Ran::default();
    let program = argv.first().map(|p| p.rsplit('/').next().unwrap_or(p)).unwrap_or_default();
    ran.code = match (program, argv.get(1).map(String::as_str)) {
        ("sh", Some("-c")) => script(argv.get(2).map(String::as_str).unwrap_or_default(), files, &mut ran),
        ("sh", _) => {
            ran.stderr.extend_from_slice(b"sh: the fake sandbox runs only `sh -c SCRIPT`\n");
            2
        }
        _ => match command(program, &argv[argv.len().min(1)..], files, &mut ran.stdout, &mut ran.stderr) {
            Some(code) => code,
            None => {
                let message = format!(
                    "{program}: not in the fake sandbox's commands (true, false, echo, cat, sh -c)\n",
                    program = argv.first().map(String::as_str).unwrap_or_default()
                );
                ran.stderr.extend_from_slice(message.as_bytes());
                127
            }
        },
    };
    ran
}

/// One command of the vocabulary writing to `out` and `err`; `None` if there is no such command.
fn command(program: &str, args: &[String], files: &Files, out: &mut Vec<u8>, err: &mut Vec<u8>) -> Option<i32> {
    Some(match program {
        "true" => 0,
        "false" => 1,
        "echo" => {
            out.extend_from_slice(args.join(" ").as_bytes());
            out.push(b'\n');
            0
        }
        "cat" => {
            let mut code = 0;
            for path in args {
                match files.get(&absolute(path)) {
                    Some(contents) => out.extend_from_slice(contents),
                    None => {
                        err.extend_from_slice(
                            format!("cat: can't open '{path}': No such file or directory\n").as_bytes(),
                        );
                        code = 1;
                    }
                }
            }
            code
        }
        _ => return None,
    })
}

/// Runs the steps of a `sh -c` script; returns its exit status.
fn script(text: &str, files: &mut Files, ran: &mut Ran) -> i32 {
    let mut status = 0;
    for step in text.split(';') {
        let mut words = words(step);
        if words.is_empty() {
            continue;
        }
        if words[0] == "exit" {
            return words.get(1).map_or(Some(status), |n| n.parse().ok()).unwrap_or(2);
        }
        let redirect = match words.iter().position(|w| w == ">" || w == ">>") {
            Some(at) if at + 2 == words.len() => {
                let path = absolute(&words[at + 1]);
                let append = words[at] == ">>";
                words.truncate(at);
                Some((path, append))
            }
            Some(_) => {
                ran.stderr.extend_from_slice(b"sh: a redirection takes one path, at the end of the step\n");
                status = 2;
                continue;
            }
            None => None,
        };
        let mut out = Vec::new();
        status = match command(&words[0], &words[1..], files, &mut out, &mut ran.stderr) {
            Some(code) => code,
            None => {
                ran.stderr.extend_from_slice(format!("sh: {}: not found\n", words[0]).as_bytes());
                127
            }
        };
        match redirect {
            Some((path, true)) => files.entry(path).or_default().extend(out),
            Some((path, false)) => {
                files.insert(path, out);
            }
            None => ran.stdout.extend(out),
        }
    }
    status
}

/// Splits a step into words: blanks separate them, quotes group them, and `>`/`>>` at the start
/// of a word are words of their own.
fn words(step: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote = None;
    for c in step.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, '>') if word.as_deref().is_none_or(|w| w.chars().all(|c| c == '>')) => {
                word.get_or_insert_with(String::new).push('>');
            }
            (None, c) => {
                if word.as_deref().is_some_and(|w| w.starts_with('>')) {
                    words.extend(word.take());
                }
                word.get_or_insert_with(String::new).push(c);
            }
        }
    }
    words.extend(word);
    words
}

/// `path` from `/` (the working directory of every fake process).
fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, files: &mut Files) -> Ran {
        run(&["sh".into(), "-c".into(), script.into()], files)
    }

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn plain_commands() {
        let mut files = Files::new();
        assert_eq!(run(&argv(&["true"]), &mut files).code, 0);
        assert_eq!(run(&argv(&["/bin/false"]), &mut files).code, 1);
        let echo = run(&argv(&["echo", "a", "b"]), &mut files);
        assert_eq!((echo.stdout.as_slice(), echo.code), (&b"a b\n"[..], 0));
        files.insert("/etc/x".into(), b"x\n".to_vec());
        let cat = run(&argv(&["cat", "/etc/x", "/nope", "etc/x"]), &mut files);
        assert_eq!((cat.stdout.as_slice(), cat.code), (&b"x\nx\n"[..], 1));
        assert_eq!(String::from_utf8_lossy(&cat.stderr), "cat: can't open '/nope': No such file or directory\n");
    }

    #[test]
    fn unknown_commands_exit_127_saying_why() {
        let mut files = Files::new();
        for unknown in [argv(&["sleep", "1"]), argv(&[]), argv(&["sh"])] {
            let ran = run(&unknown, &mut files);
            assert_ne!(ran.code, 0, "{unknown:?}");
            assert!(!ran.stderr.is_empty(), "{unknown:?}");
        }
        assert_eq!(run(&argv(&["sleep", "1"]), &mut files).code, 127);
    }

    #[test]
    fn scripts_write_read_and_exit() {
        let mut files = Files::new();
        let ran = sh("echo hi > /tmp/f; cat /tmp/f; exit 3", &mut files);
        assert_eq!((ran.stdout.as_slice(), ran.code), (&b"hi\n"[..], 3));
        assert_eq!(files["/tmp/f"], b"hi\n");
        let ran = sh("echo 'two  words' >>/tmp/f;echo \"x;\"y; cat /tmp/f", &mut files);
        // `;` splits steps even inside quotes: the fake's shell is that simple.
        assert_eq!(String::from_utf8_lossy(&ran.stdout), "x\nhi\ntwo  words\n");
        assert_eq!(ran.code, 0);
        assert_eq!(sh("false", &mut files).code, 1);
        assert_eq!(sh("false; exit", &mut files).code, 1);
        assert_eq!(sh("exit nope", &mut files).code, 2);
        let ran = sh("cat /missing; frobnicate; echo after", &mut files);
        assert_eq!((ran.stdout.as_slice(), ran.code), (&b"after\n"[..], 0));
        assert!(String::from_utf8_lossy(&ran.stderr).contains("sh: frobnicate: not found"));
        assert_eq!(sh("frobnicate", &mut files).code, 127);
        assert_eq!(sh("echo a > b c", &mut files).code, 2);
        assert_eq!(sh("", &mut files), Ran::default());
    }

    #[test]
    fn words_split_on_blanks_quotes_and_redirections() {
        assert_eq!(words(" echo  'a b'\"c\" >x"), ["echo", "a bc", ">", "x"]);
        assert_eq!(words("echo a>>y"), ["echo", "a>>y"]);
        assert_eq!(words("echo >> y"), ["echo", ">>", "y"]);
        assert_eq!(words("echo ''"), ["echo", ""]);
    }
}
