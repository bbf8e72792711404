//! What every benchmark report prints: the machine and binary up top, tables, numbers.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{cores, file_size};
use crate::procfs;

/// Date, cores, CPU model and kernel, printed at the top of every report.
pub fn print_machine(title: &str) {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default();
    println!("== {title} ==");
    println!(
        "machine: {} cores ({}), Linux {}, {date}, load average {}",
        cores(),
        procfs::cpu_model(),
        procfs::kernel_release(),
        procfs::load_average()
    );
}

/// The binary's path and size, and what `file` says of it where `file` is installed.
pub fn print_binary(bin: &Path) {
    println!("binary:  {} ({} bytes)", bin.display(), file_size(bin));
    let kind = Command::new("file")
        .arg("-b")
        .arg(bin)
        .stderr(Stdio::null())
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default();
    if !kind.is_empty() {
        println!("         {kind}");
    }
}

/// Prints rows as a table: the first column left-aligned, the others right-aligned.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    print_table_with(header, rows, 1);
}

/// Prints rows as a table: the first `left` columns left-aligned, the others right-aligned.
pub fn print_table_with(header: &[&str], rows: &[Vec<String>], left: usize) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i < left {
                out.push_str(&format!("| {cell:<w$} ", w = widths[i]));
            } else {
                out.push_str(&format!("| {cell:>w$} ", w = widths[i]));
            }
        }
        out.push('|');
        out
    };
    println!("{}", line(header.to_vec()));
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i < left {
                format!(":{}", "-".repeat(*w + 1))
            } else {
                format!("{}:", "-".repeat(*w + 1))
            }
        })
        .collect();
    println!("|{}|", rule.join("|"));
    for row in rows {
        println!("{}", line(row.iter().map(String::as_str).collect()));
    }
}

/// Seconds as milliseconds with three decimals.
pub fn ms(seconds: f64) -> String {
    format!("{:.3}", seconds * 1000.0)
}

/// Thousands separators, for counts.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|group| std::str::from_utf8(group).unwrap_or("?"))
        .collect();
    groups.join(",")
}
