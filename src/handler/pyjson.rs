//! Answers written as TorchServe's Python worker writes a handler's return value:
//! `json.dumps(value, indent=2)` — Python's float spelling, `ensure_ascii` escapes, its layout.

/// `json.dumps(row.tolist(), indent=2)`.
pub fn write_nested(out: &mut String, shape: &[usize], data: &[f32], depth: usize) {
    let Some((&len, rest)) = shape.split_first() else {
        push_py_float(out, f64::from(data[0]));
        return;
    };
    if len == 0 {
        out.push_str("[]");
        return;
    }
    let step = rest.iter().product::<usize>();
    out.push('[');
    for (i, chunk) in data.chunks(step.max(1)).take(len).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', 2 * (depth + 1)));
        write_nested(out, rest, chunk, depth + 1);
    }
    out.push('\n');
    out.extend(std::iter::repeat_n(' ', 2 * depth));
    out.push(']');
}

/// A float as Python's `repr` writes it (which `json.dumps` uses): the shortest digits that
/// read back to the same value, in positional notation for exponents -4 to 15, else
/// scientific with a signed exponent of at least two digits.
pub fn push_py_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
        return;
    }
    if v.is_infinite() {
        out.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    if v == 0.0 {
        out.push_str(if v.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    // Rust's `{:e}` gives the same shortest round-trip digits.
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    out.push_str(sign);
    if (-4..16).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        } else {
            let point = exp as usize + 1;
            if digits.len() <= point {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', point - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..point]);
                out.push('.');
                out.push_str(&digits[point..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push_str(&format!(
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        ));
    }
}

/// A string as `json.dumps` writes it: quoted, with `ensure_ascii`'s `\uXXXX` escapes for
/// everything outside printable ASCII (surrogate pairs beyond the BMP).
pub fn push_py_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// `json.dumps(dict, indent=2)` of string keys and float values, in the given order.
pub fn write_float_dict<'a>(
    out: &mut String,
    entries: impl IntoIterator<Item = (&'a str, f64)>,
    depth: usize,
) {
    let mut empty = true;
    for (key, value) in entries {
        out.push_str(if empty { "{" } else { "," });
        empty = false;
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', 2 * (depth + 1)));
        push_py_str(out, key);
        out.push_str(": ");
        push_py_float(out, value);
    }
    if empty {
        out.push_str("{}");
        return;
    }
    out.push('\n');
    out.extend(std::iter::repeat_n(' ', 2 * depth));
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spellings are what Python 3's `json.dumps(..., indent=2)` writes for the same values.
    #[test]
    fn strings_and_dicts_are_written_as_json_dumps_writes_them() {
        let mut s = String::new();
        push_py_str(&mut s, "caf\u{e9} \"q\"\\ \u{1F600}\n");
        assert_eq!(s, r#""caf\u00e9 \"q\"\\ \ud83d\ude00\n""#);
        let mut s = String::new();
        write_float_dict(&mut s, [("a", 0.5), ("b", 1e-5)], 0);
        assert_eq!(s, "{\n  \"a\": 0.5,\n  \"b\": 1e-05\n}");
        let mut s = String::new();
        write_float_dict(&mut s, [], 1);
        assert_eq!(s, "{}");
    }
}
