//! A benchmark's command line: `--name value` options and `--flag` switches.

use std::collections::HashMap;

use super::fail;

pub struct Args {
    values: HashMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    /// Reads this process's arguments; `--help` prints `usage` and exits. Cargo adds
    /// `--bench` when it runs a `harness = false` target: it is accepted and ignored.
    pub fn parse(valued: &[&str], switches: &[&str], usage: &str) -> Args {
        let mut values = HashMap::new();
        let mut flags = Vec::new();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let name = arg.as_str();
            if name == "--bench" {
                continue;
            }
            if name == "-h" || name == "--help" {
                println!("{usage}");
                std::process::exit(0);
            }
            let (key, inline) = match name.split_once('=') {
                Some((key, value)) => (key, Some(value.to_string())),
                None => (name, None),
            };
            let key = key.trim_start_matches("--");
            if valued.contains(&key) {
                let value = inline.or_else(|| args.next()).unwrap_or_else(|| {
                    eprintln!("--{key} needs a value\n\n{usage}");
                    std::process::exit(2)
                });
                values.insert(key.to_string(), value);
            } else if switches.contains(&key) && inline.is_none() {
                flags.push(key.to_string());
            } else {
                eprintln!("unknown argument {arg:?}\n\n{usage}");
                std::process::exit(2);
            }
        }
        Args { values, flags }
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|flag| flag == name)
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn get<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.text(name).map(|value| {
            value
                .parse()
                .unwrap_or_else(|_| fail(format!("--{name}: cannot read {value:?}")))
        })
    }

    pub fn or<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        self.get(name).unwrap_or(default)
    }
}
