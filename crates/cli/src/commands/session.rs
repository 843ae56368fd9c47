//! `hiber session ...`: a small blocking client of `hiber serve`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::cli::{SessionArgs, SessionCommand};
use crate::format;

/// A blocking client of `hiber serve`: its URL and token.
pub(crate) struct Client {
    server: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client of `server` with the token of `home` (or `$HIBER_TOKEN`).
    fn new(home: &Path, server: &str) -> Result<Client> {
        let path = home.join(hiber_server::auth::TOKEN_FILE);
        let token = match std::env::var("HIBER_TOKEN") {
            Ok(t) if !t.is_empty() => t,
            _ => std::fs::read_to_string(&path)
                .with_context(|| {
                    format!("cannot read the API token {} (has `hiber serve` run on this home?)", path.display())
                })?
                .trim()
                .to_string(),
        };
        Ok(Client::with_token(server, token, None))
    }

    /// A client of `server` with `token`; `timeout` bounds each request.
    pub(crate) fn with_token(server: &str, token: String, timeout: Option<std::time::Duration>) -> Client {
        let mut agent = ureq::AgentBuilder::new();
        if let Some(timeout) = timeout {
            agent = agent.timeout(timeout);
        }
        Client { server: server.trim_end_matches('/').to_string(), token, agent: agent.build() }
    }

    /// Sends a request; an API error becomes one line with its message.
    pub(crate) fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<ureq::Response> {
        let request = self
            .agent
            .request(method, &format!("{}{path}", self.server))
            .set("Authorization", &format!("Bearer {}", self.token));
        let result = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match result {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(code, response)) => {
                let body: Value = response.into_json().unwrap_or(Value::Null);
                let message = body["error"]["message"].as_str().unwrap_or("no details").to_string();
                bail!("{method} {path}: {message} (HTTP {code})")
            }
            Err(e) => Err(anyhow!("cannot reach hiber serve at {}: {e}", self.server)),
        }
    }

    /// A request's JSON answer (`null` for an empty body).
    pub(crate) fn json(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let text = self.send(method, path, body)?.into_string()?;
        Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? })
    }
}

/// Reads server-sent events from `body`, calling `each(event, data)` until
/// it returns false or the stream ends.
pub(crate) fn events(body: impl Read, mut each: impl FnMut(&str, &str) -> Result<bool>) -> Result<()> {
    let (mut event, mut data) = (String::new(), String::new());
    for line in BufReader::new(body).lines() {
        let line = line.context("the server's stream broke off")?;
        if line.is_empty() {
            if !data.is_empty() && !each(if event.is_empty() { "message" } else { &event }, &data)? {
                return Ok(());
            }
            event.clear();
            data.clear();
        } else if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    Ok(())
}

/// One entry as a line: `seq kind payload`.
fn entry_line(entry: &Value, json: bool) -> String {
    if json {
        return entry.to_string();
    }
    let payload = match &entry["payload"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!("{:>5} {:<11} {payload}", entry["seq"], entry["kind"].as_str().unwrap_or("?"))
}

pub fn session(home: &Path, args: SessionArgs) -> Result<i32> {
    let client = Client::new(home, &args.server)?;
    let mut out = crate::output::stdout();
    match args.command {
        SessionCommand::New { image, snapshot, env, idle_timeout, command } => {
            let mut vars = BTreeMap::new();
            for pair in env {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| anyhow!("invalid environment variable '{pair}': use KEY=VALUE"))?;
                vars.insert(k.to_string(), v.to_string());
            }
            let body = json!({"image": image, "snapshot": snapshot, "command": command, "env": vars, "idle_timeout_s": idle_timeout});
            let session = client.json("POST", "/v1/sessions", Some(body))?;
            writeln!(out, "{}", session["id"].as_str().unwrap_or_default())?;
        }
        SessionCommand::Send { id, message, json } => {
            let content: Value = if json {
                serde_json::from_str(&message).context("the message is not JSON")?
            } else {
                Value::String(message)
            };
            let response =
                client.send("POST", &format!("/v1/sessions/{id}/messages"), Some(json!({"content": content})))?;
            events(response.into_reader(), |event, data| match event {
                "entry" => {
                    let entry: Value = serde_json::from_str(data)?;
                    if entry["kind"] != "user" {
                        writeln!(out, "{}", entry_line(&entry, false))?;
                        out.flush()?;
                    }
                    Ok(true)
                }
                "error" => bail!("{data}"),
                "done" => Ok(false),
                _ => Ok(true),
            })?;
        }
        SessionCommand::Ls(flag) => {
            let list = client.json("GET", "/v1/sessions", None)?;
            let sessions = list["sessions"].as_array().cloned().unwrap_or_default();
            if flag.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&sessions)?)?;
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = sessions
                .iter()
                .map(|s| {
                    let command: Vec<&str> = s["command"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    vec![
                        s["id"].as_str().unwrap_or_default().to_string(),
                        s["state"].as_str().unwrap_or_default().to_string(),
                        s["last_seq"].to_string(),
                        s["image"].as_str().unwrap_or("-").to_string(),
                        format::age(s["created"].as_u64().unwrap_or(0) / 1000),
                        command.join(" "),
                    ]
                })
                .collect();
            format::table(&["ID", "STATE", "ENTRIES", "IMAGE", "CREATED", "COMMAND"], &rows)?;
        }
        SessionCommand::Show { id } => {
            let session = client.json("GET", &format!("/v1/sessions/{id}"), None)?;
            writeln!(out, "{}", serde_json::to_string_pretty(&session)?)?;
        }
        SessionCommand::Log { id, after, follow, json } => {
            if follow {
                let response = client.send("GET", &format!("/v1/sessions/{id}/context/stream?after={after}"), None)?;
                events(response.into_reader(), |event, data| {
                    if event == "entry" {
                        writeln!(out, "{}", entry_line(&serde_json::from_str(data)?, json))?;
                        out.flush()?;
                    }
                    Ok(true)
                })?;
            } else {
                let mut after = after;
                loop {
                    let page = client.json("GET", &format!("/v1/sessions/{id}/context?after={after}"), None)?;
                    let entries = page["entries"].as_array().cloned().unwrap_or_default();
                    let Some(last) = entries.last().and_then(|e| e["seq"].as_u64()) else { break };
                    for entry in &entries {
                        writeln!(out, "{}", entry_line(entry, json))?;
                    }
                    after = last;
                }
            }
        }
        SessionCommand::Rm { ids } => {
            for id in ids {
                client.send("DELETE", &format!("/v1/sessions/{id}"), None)?;
                writeln!(out, "{id}")?;
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events_are_split_by_blank_lines() {
        let body = "event: entry\ndata: {\"seq\":1}\n\n: keep-alive\n\nevent: done\ndata: a\ndata: b\n\n";
        let mut seen = Vec::new();
        events(body.as_bytes(), |e, d| {
            seen.push((e.to_string(), d.to_string()));
            Ok(true)
        })
        .unwrap();
        assert_eq!(seen, vec![("entry".into(), "{\"seq\":1}".into()), ("done".into(), "a\nb".into())]);
    }
}
