//! `hiber ps`: list sandboxes.

use std::path::Path;

use anyhow::Result;
use hiber_sandbox::{SandboxInfo, Status};

use super::backend;
use crate::format;

pub fn ps(home: &Path, json: bool) -> Result<i32> {
    let sandboxes = backend(home)?.list()?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&sandboxes)?)?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = sandboxes.iter().map(row).collect();
    format::table(&["ID", "NAME", "IMAGE", "STATUS", "CREATED", "COMMAND"], &rows)?;
    Ok(0)
}

fn row(info: &SandboxInfo) -> Vec<String> {
    let r = info;
    let status = match &info.status {
        Status::Running => "running".to_string(),
        Status::Suspended { snapshot } => format!("suspended ({snapshot})"),
        Status::Exited { code: Some(code) } => format!("exited ({code})"),
        Status::Exited { code: None } => "exited (?)".to_string(),
    };
    let command = r.main.as_ref().map(|m| one_line(&m.argv.join(" "), 40)).unwrap_or_else(|| "-".into());
    vec![r.id.clone(), r.name.clone().unwrap_or_default(), r.image.clone(), status, format::age(r.created), command]
}

/// `text` on one line, cut to `max` characters with an ellipsis.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max - 1).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn commands_are_flattened_and_cut() {
        assert_eq!(one_line("sh -c\n  echo  hi", 40), "sh -c echo hi");
        assert_eq!(one_line("abcdefghij", 5), "abcd…");
    }
}
