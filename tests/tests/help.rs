//! `--help` of ringwork-echo, ringwork-files and every ringwork-bench command: each option
//! that takes a value says what it defaults to (clap's `[default: ...]`, or the doc comment's
//! own words where the default is computed), and none quotes measurements (those live in
//! docs/PERFORMANCE.md, with their commands and dates). A switch's default is off.

use std::process::Command;

use ringwork_e2e::binary;

/// The `--help` text of `bin` with `args`.
fn help(bin: &str, args: &[&str]) -> String {
    let out = Command::new(binary(bin))
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("run {bin} --help: {e}"));
    assert!(out.status.success(), "{bin} {args:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The help's options and arguments, each as its heading and description, in order (long
/// help: the description on the lines below; short help: on the heading's line).
fn entries(help: &str) -> Vec<(String, String)> {
    let starts = |l: &str| {
        let t = l.trim_start();
        let indent = l.len() - t.len();
        (2..=6).contains(&indent)
            && (t.starts_with("--")
                || t.starts_with('-') && t.get(2..4) == Some(", ")
                || t.starts_with('[')
                || t.starts_with('<'))
    };
    let mut out: Vec<(String, String)> = Vec::new();
    let mut in_options = false;
    for line in help.lines() {
        if line.ends_with(':') && !line.starts_with(' ') {
            in_options = line == "Options:" || line == "Arguments:";
            continue;
        }
        if !in_options {
            continue;
        }
        if starts(line) {
            // Short help puts the text on the heading's line, after a run of spaces.
            let (heading, text) = line.trim().split_once("  ").unwrap_or((line.trim(), ""));
            out.push((heading.to_string(), format!("{} ", text.trim())));
        } else if let Some((_, text)) = out.last_mut() {
            text.push_str(line.trim());
            text.push(' ');
        }
    }
    out
}

/// The first word of `text` that is a ratio or a percentage ("1.6x", "30%"): how a
/// measurement reads.
fn ratio_or_percentage(text: &str) -> Option<&str> {
    text.split(|c: char| c.is_whitespace() || "(),;:".contains(c))
        .find(|w| {
            w.strip_suffix(['x', '%'])
                .is_some_and(|n| !n.is_empty() && n.parse::<f64>().is_ok())
        })
}

/// Checks one help text; returns what is wrong with it.
fn problems(what: &str, help: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let entries = entries(help);
    assert!(entries.len() >= 2, "{what}: no options found in\n{help}");
    for (heading, text) in entries {
        if heading.contains("--help") || heading.contains("--version") {
            continue;
        }
        let takes_value = heading.contains('<') || heading.contains("[=");
        if takes_value && !text.to_lowercase().contains("default") {
            bad.push(format!("{what} {heading}: no default stated: {text}"));
        }
        if let Some(figure) = ratio_or_percentage(&text) {
            bad.push(format!(
                "{what} {heading}: a measurement ({figure}) in --help: {text}"
            ));
        }
    }
    bad
}

#[test]
fn every_option_with_a_value_states_its_default() {
    let mut bad = Vec::new();
    for bin in ["ringwork-echo", "ringwork-files"] {
        bad.extend(problems(bin, &help(bin, &[])));
    }
    let top = help("ringwork-bench", &[]);
    let commands: Vec<&str> = top
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(
        commands.contains(&"compare") && commands.contains(&"echo"),
        "{top}"
    );
    for command in commands {
        bad.extend(problems(
            &format!("ringwork-bench {command}"),
            &help("ringwork-bench", &[command]),
        ));
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_help_parser_finds_options_and_their_text() {
    let help = "Usage: x [OPTIONS]\n\nArguments:\n  [ROOT]\n          Directory to serve\n\n          \
                [default: .]\n\nOptions:\n      --listen <LISTEN>\n          Address\n\n          \
                [default: 127.0.0.1:1]\n\n      --quick\n          Small\n\n      --rate <RATE>\n          \
                Open loop\n\n  -h, --help\n          Print help\n";
    let short =
        "Options:\n      --conns <CONNS>  Connections [default: 50]\n      --rate <RATE>    Open\n";
    let e = entries(short);
    assert_eq!(
        e[0],
        (
            "--conns <CONNS>".into(),
            "Connections [default: 50] ".into()
        )
    );
    assert_eq!(
        problems("y", &format!("{short}  -h, --help  Print help\n")).len(),
        1
    );
    let e = entries(help);
    let headings: Vec<&str> = e.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(
        headings,
        [
            "[ROOT]",
            "--listen <LISTEN>",
            "--quick",
            "--rate <RATE>",
            "-h, --help"
        ]
    );
    assert!(e[1].1.contains("[default: 127.0.0.1:1]"));
    let bad = problems("x", help);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].contains("--rate <RATE>"), "{bad:?}");
    assert_eq!(
        ratio_or_percentage("plain sends (measured 1.6x faster)"),
        Some("1.6x")
    );
    assert_eq!(ratio_or_percentage("30% more CPU"), Some("30%"));
    assert_eq!(ratio_or_percentage("4 KiB, Linux 6.12, index x"), None);
}
