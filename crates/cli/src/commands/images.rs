//! `hiber images` and `hiber image build|import|rm`.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hiber_image::{parse_build_file, Image, ImageStore, Step};

use crate::cli::{BuildArgs, ImageCommand};
use crate::format;

pub fn list(home: &Path, json: bool) -> Result<i32> {
    let images = ImageStore::open(home)?.list()?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&images)?)?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                format::size(i.size_bytes),
                i.layers.len().to_string(),
                format::age(i.created),
                i.source.clone(),
            ]
        })
        .collect();
    format::table(&["NAME", "SIZE", "LAYERS", "CREATED", "SOURCE"], &rows)?;
    Ok(0)
}

pub fn image(home: &Path, command: ImageCommand) -> Result<i32> {
    let store = ImageStore::open(home)?;
    let started = Instant::now();
    let mut progress = Progress::new();
    let image: Image = match command {
        ImageCommand::Build(args) => build(&store, args, &mut progress)?,
        ImageCommand::Import { path, name } => store.import(&path, &name, &mut |l| progress.line(l))?,
        ImageCommand::Rm { name } => {
            store.remove(&name)?;
            collect_layers(home)?;
            outln!("{name}")?;
            return Ok(0);
        }
    };
    progress.finish();
    collect_layers(home)?;
    eprintln!("image {} ready: {} in {:.1?}", image.name, format::size(image.size_bytes), started.elapsed());
    outln!("{}", image.name)?;
    Ok(0)
}

/// `hiber image build`: a stock image, or one built `--from` another with steps.
fn build(store: &ImageStore, args: BuildArgs, progress: &mut Progress) -> Result<Image> {
    let mut steps = Vec::new();
    if !args.apt.is_empty() {
        steps.push(Step::Apt(args.apt));
    }
    if !args.pip.is_empty() {
        steps.push(Step::Pip(args.pip));
    }
    for copy in &args.copy {
        let Some((src, dst)) = copy.split_once(':') else { bail!("invalid --copy '{copy}': use SRC:DST") };
        steps.push(Step::Copy { src: src.into(), dst: dst.to_string() });
    }
    steps.extend(args.run.into_iter().map(Step::Run));
    let mut from = args.from;
    if let Some(file) = &args.file {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let (base, file_steps) = parse_build_file(&text, file.parent().unwrap_or(Path::new(".")))?;
        from = from.or(base);
        if from.is_none() {
            bail!("{} names no base: add a `from IMAGE` line or give --from", file.display());
        }
        steps = file_steps;
    }
    match (from, args.name.as_str()) {
        (Some(from), name) => Ok(store.build_from(name, &from, &steps, &mut |l| progress.line(l))?),
        (None, _) if !steps.is_empty() => bail!("--apt, --pip, --copy and --run need --from IMAGE"),
        (None, "busybox") => Ok(store.build_busybox(&mut |l| progress.line(l))?),
        (None, "debian") => Ok(store.build_debian(&mut |l| progress.line(l))?),
        (None, name) => bail!("no stock image '{name}' (busybox, debian): use --from IMAGE to build on another"),
    }
}

/// Removes layers nothing uses any more (a replaced or removed image's),
/// when this user may run sandboxes at all.
pub(super) fn collect_layers(home: &Path) -> Result<()> {
    if let Ok(backend) = super::backend(home) {
        backend.collect_garbage()?;
    }
    Ok(())
}

/// Shows progress lines: a spinner on a terminal, plain lines otherwise.
pub struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    pub fn new() -> Progress {
        Progress(std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        }))
    }

    pub fn line(&mut self, line: &str) {
        match &self.0 {
            Some(bar) => bar.set_message(line.to_string()),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
