//! `#[skiff::main]`: turns a service's `async fn main` into the entry the
//! runtime calls, and emits the image's manifest note.
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//!
//! // Declares a NIC named "service" that makes outgoing connections.
//! #[skiff::main(net = "service", outbound)]
//! async fn main(env: skiff::Env) -> Result<(), skiff::Error> {
//!     let nic = env.take_net("service")?;
//!     skiff::log::info!("MAC {:02x?}", nic.mac());
//!     Ok(())
//! }
//! ```
//!
//! `#[skiff::main]` alone declares no device; `net = "NAME"` declares a NIC
//! (repeat it for more), and `outbound` says the service connects out
//! through its NICs. The function may take no argument or one (the
//! [`Env`]), and may return anything that implements `skiff::MainResult`:
//! `()`, `ExitStatus`, or a `Result` whose error implements `Display`
//! (`skiff::Error` takes any error with `?`). The guest-only examples in
//! these crates are fenced `ignore` for rustdoc, which builds for the host;
//! `crates/cli/tests/docs.rs` builds each of them for the guest.
//!
//! The parser is a few lines over the token stream rather than `syn`: the
//! attribute only needs the function's name, whether it is `async`, and
//! whether it takes an argument.
//!
//! [`Env`]: https://docs.rs/skiff

#![forbid(unsafe_code)]

use proc_macro::{Delimiter, TokenStream, TokenTree};

/// Marks the service's entry point. See the crate documentation.
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr, item.clone()) {
        Ok(extra) => {
            let mut out = item;
            out.extend(extra);
            out
        }
        Err(message) => {
            let mut out = item;
            out.extend(compile_error(&message));
            out
        }
    }
}

fn compile_error(message: &str) -> TokenStream {
    format!("::core::compile_error!({message:?});").parse().expect("valid tokens")
}

struct Signature {
    name: String,
    takes_env: bool,
}

fn parse_signature(item: TokenStream) -> Result<Signature, String> {
    let tokens: Vec<TokenTree> = item.into_iter().collect();
    let fn_pos = tokens
        .iter()
        .position(|t| matches!(t, TokenTree::Ident(i) if i.to_string() == "fn"))
        .ok_or("#[skiff::main] goes on a function: `async fn main(env: skiff::Env)`")?;
    let is_async = tokens[..fn_pos].iter().any(|t| matches!(t, TokenTree::Ident(i) if i.to_string() == "async"));
    if !is_async {
        return Err("#[skiff::main] needs an `async fn`".into());
    }
    let name = match tokens.get(fn_pos + 1) {
        Some(TokenTree::Ident(i)) => i.to_string(),
        _ => return Err("#[skiff::main]: expected the function's name after `fn`".into()),
    };
    if let Some(TokenTree::Punct(p)) = tokens.get(fn_pos + 2)
        && p.as_char() == '<'
    {
        return Err("#[skiff::main]: the main function cannot be generic".into());
    }
    let params = tokens[fn_pos + 2..]
        .iter()
        .find_map(|t| match t {
            TokenTree::Group(g) if g.delimiter() == Delimiter::Parenthesis => Some(g.stream()),
            _ => None,
        })
        .ok_or("#[skiff::main]: expected the parameter list")?;
    let commas = params.clone().into_iter().filter(|t| matches!(t, TokenTree::Punct(p) if p.as_char() == ',')).count();
    let nonempty = !params.is_empty();
    // `(env: Env)` or `(env: Env,)`: one parameter. Angle brackets in a
    // type could hide commas, but `Env` has none.
    let count = if !nonempty {
        0
    } else if params_end_with_comma(&params) {
        commas
    } else {
        commas + 1
    };
    if count > 1 {
        return Err("#[skiff::main]: main takes at most one argument, the `skiff::Env`".into());
    }
    Ok(Signature { name, takes_env: count == 1 })
}

fn params_end_with_comma(params: &TokenStream) -> bool {
    matches!(params.clone().into_iter().last(), Some(TokenTree::Punct(p)) if p.as_char() == ',')
}

/// What the attribute's arguments declare.
struct Declared {
    /// `net = "service", block = "disk"` -> [("Net", "service"), ("Block", "disk")].
    devices: Vec<(&'static str, String)>,
    /// `outbound`: the service connects out through its NICs.
    outbound: bool,
}

fn parse_devices(attr: TokenStream) -> Result<Declared, String> {
    let tokens: Vec<TokenTree> = attr.into_iter().collect();
    let mut devices = Vec::new();
    let mut outbound = false;
    let mut i = 0;
    while i < tokens.len() {
        let key = match &tokens[i] {
            TokenTree::Ident(k) => k.to_string(),
            other => {
                return Err(format!("#[skiff::main]: unexpected `{other}`; use net = \"name\""));
            }
        };
        if key == "outbound" {
            outbound = true;
            i += 1;
        } else {
            let kind = match key.as_str() {
                "net" => "Net",
                "block" => "Block",
                _ => {
                    return Err(format!("#[skiff::main]: unknown argument `{key}` (known: net, block, outbound)"));
                }
            };
            match tokens.get(i + 1) {
                Some(TokenTree::Punct(p)) if p.as_char() == '=' => {}
                _ => return Err(format!("#[skiff::main]: expected `=` after `{key}`")),
            }
            let name = match tokens.get(i + 2) {
                Some(TokenTree::Literal(l)) => {
                    let s = l.to_string();
                    if !(s.starts_with('"') && s.ends_with('"') && s.len() >= 2) {
                        return Err(format!("#[skiff::main]: the {key} device name must be a string"));
                    }
                    s[1..s.len() - 1].to_string()
                }
                _ => return Err(format!("#[skiff::main]: expected a string after `{key} =`")),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(format!(
                    "#[skiff::main]: device name {name:?} must be non-empty ASCII letters, digits, '-' or '_'"
                ));
            }
            devices.push((kind, name));
            i += 3;
        }
        match tokens.get(i) {
            None => {}
            Some(TokenTree::Punct(p)) if p.as_char() == ',' => i += 1,
            Some(other) => return Err(format!("#[skiff::main]: expected `,`, found `{other}`")),
        }
    }
    if outbound && !devices.iter().any(|(k, _)| *k == "Net") {
        return Err("#[skiff::main]: `outbound` needs a NIC (net = \"name\")".into());
    }
    Ok(Declared { devices, outbound })
}

fn expand(attr: TokenStream, item: TokenStream) -> Result<TokenStream, String> {
    let sig = parse_signature(item)?;
    let declared = parse_devices(attr)?;
    let call = if sig.takes_env {
        format!("{}(env).await", sig.name)
    } else {
        format!("{{ let _ = env; {}().await }}", sig.name)
    };
    let flags = if declared.outbound { "::skiff::__private::FLAG_OUTBOUND" } else { "0" };
    let device_list: Vec<String> = declared
        .devices
        .iter()
        .map(|(kind, name)| {
            let flags = if *kind == "Net" { flags } else { "0" };
            format!("(::skiff::__private::DeviceKind::{kind}, {name:?}, {flags})")
        })
        .collect();
    let code = format!(
        r#"
        #[doc(hidden)]
        #[unsafe(export_name = "__skiff_service_main")]
        fn __skiff_service_main_entry(env: ::skiff::Env) -> ::skiff::__private::MainFuture {{
            ::skiff::__private::boxed_main(async move {{ {call} }})
        }}

        #[doc(hidden)]
        #[used]
        #[unsafe(link_section = ".note.skiff")]
        static __SKIFF_MANIFEST: ::skiff::__private::ManifestNote =
            ::skiff::__private::ManifestNote::new(&[{devices}]);
        "#,
        devices = device_list.join(", "),
    );
    code.parse().map_err(|e| format!("#[skiff::main]: internal expansion error: {e:?}"))
}
