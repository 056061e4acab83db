//! The hand-written librados/librbd declarations (`src/sys/decl.rs`, and
//! the feature bits in `src/features.rs`) against the real headers: this
//! test turns every item into C11 static assertions and has the C compiler
//! check them with `#include <rbd/librbd.h>`:
//!
//! * each function: `__builtin_types_compatible_p(__typeof__(&f), R (*)(A..))`
//!   (exact parameter and return types, `const` included);
//! * each `pub type`: compatible with the header's typedef of that name;
//! * each `#[repr(C)]` struct: every member's type, and that the members are
//!   consecutive and complete (offsets and size as `repr(C)` lays them out);
//! * each constant: equal to the header's macro or enumerator.
//!
//! A second test corrupts one declaration of each kind and checks that the
//! compiler then rejects it, so the check itself can fail.

#![cfg(feature = "librbd")]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use quote::ToTokens;
use syn::{Expr, ForeignItem, Item, ReturnType, Type};

const HEADERS: [&str; 2] = ["/usr/include/rbd/librbd.h", "/usr/include/rados/librados.h"];

fn headers_present() -> bool {
    if HEADERS.iter().all(|h| Path::new(h).exists()) {
        return true;
    }
    let msg = "librbd-dev headers (/usr/include/rbd/librbd.h) are missing";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}: in CI this is a failure (tests/run installs librbd-dev)");
    }
    eprintln!("SKIP: {msg}");
    false
}

fn source(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn expr(e: &Expr) -> String {
    quote_tokens(e)
}

fn quote_tokens<T: ToTokens>(t: &T) -> String {
    t.to_token_stream().to_string()
}

/// The C spelling of a Rust FFI type.
fn c_type(t: &Type) -> String {
    match t {
        Type::Path(p) => {
            let seg = p.path.segments.last().expect("a path has a segment");
            let name = seg.ident.to_string();
            if name == "Option" {
                // Option<extern "C" fn(..) -> R>: a nullable function pointer.
                let syn::PathArguments::AngleBracketed(args) = &seg.arguments else {
                    panic!("Option without arguments");
                };
                let Some(syn::GenericArgument::Type(Type::BareFn(f))) = args.args.first() else {
                    panic!("only Option<extern fn> is supported");
                };
                let params: Vec<String> = f.inputs.iter().map(|a| c_type(&a.ty)).collect();
                return format!("{} (*)({})", ret(&f.output), params_list(params));
            }
            match name.as_str() {
                "c_int" => "int",
                "c_char" => "char",
                "c_void" => "void",
                "u8" => "uint8_t",
                "u32" => "uint32_t",
                "u64" => "uint64_t",
                "i32" => "int32_t",
                "i64" => "int64_t",
                "usize" => "size_t",
                "isize" => "ssize_t",
                other => return other.to_string(), // a typedef of the headers
            }
            .to_string()
        }
        Type::Ptr(p) => {
            let inner = c_type(&p.elem);
            assert!(
                !inner.contains("(*)"),
                "pointers to function pointers are not supported"
            );
            if p.const_token.is_some() {
                format!("{inner} const *")
            } else {
                format!("{inner} *")
            }
        }
        Type::Array(a) => format!("{}[{}]", c_type(&a.elem), expr(&a.len)),
        Type::Tuple(t) if t.elems.is_empty() => "void".into(),
        other => panic!(
            "unsupported type in FFI declarations: {}",
            quote_tokens(other)
        ),
    }
}

fn ret(r: &ReturnType) -> String {
    match r {
        ReturnType::Default => "void".into(),
        ReturnType::Type(_, t) => c_type(t),
    }
}

fn params_list(p: Vec<String>) -> String {
    if p.is_empty() {
        "void".into()
    } else {
        p.join(", ")
    }
}

/// C static assertions for every item of one Rust source file.
fn assertions(src: &str, what: &str, out: &mut String, counts: &mut [usize; 4]) {
    let file = syn::parse_file(src).unwrap_or_else(|e| panic!("{what}: {e}"));
    for item in &file.items {
        match item {
            Item::ForeignMod(m) => {
                for fi in &m.items {
                    let ForeignItem::Fn(f) = fi else {
                        panic!("{what}: only functions are allowed in extern blocks");
                    };
                    let name = f.sig.ident.to_string();
                    let params: Vec<String> = f
                        .sig
                        .inputs
                        .iter()
                        .map(|a| match a {
                            syn::FnArg::Typed(p) => c_type(&p.ty),
                            syn::FnArg::Receiver(_) => panic!("{name}: self in extern fn"),
                        })
                        .collect();
                    let ty = format!("{} (*)({})", ret(&f.sig.output), params_list(params));
                    writeln!(
                        out,
                        "_Static_assert(__builtin_types_compatible_p(__typeof__(&{name}), {ty}), \"function {name} is not {ty}\");"
                    )
                    .unwrap();
                    counts[0] += 1;
                }
            }
            Item::Type(t) => {
                let name = t.ident.to_string();
                let ty = c_type(&t.ty);
                writeln!(
                    out,
                    "_Static_assert(__builtin_types_compatible_p({name}, {ty}), \"typedef {name} is not {ty}\");"
                )
                .unwrap();
                counts[1] += 1;
            }
            Item::Struct(s) => {
                let repr_c = s
                    .attrs
                    .iter()
                    .any(|a| a.path().is_ident("repr") && quote_tokens(&a.meta).contains('C'));
                assert!(repr_c, "{what}: struct {} must be #[repr(C)]", s.ident);
                let name = s.ident.to_string();
                let mut prev: Option<String> = None;
                let mut last = String::new();
                for f in &s.fields {
                    let field = f.ident.as_ref().expect("named fields").to_string();
                    let ty = c_type(&f.ty);
                    writeln!(
                        out,
                        "_Static_assert(__builtin_types_compatible_p(__typeof__((({name} *)0)->{field}), {ty}), \"{name}.{field} is not {ty}\");"
                    )
                    .unwrap();
                    let here = format!("offsetof({name}, {field})");
                    let expect = match &prev {
                        None => "0".to_string(),
                        Some(p) => format!(
                            "ALIGN_UP(offsetof({name}, {p}) + sizeof((({name} *)0)->{p}), _Alignof(__typeof__((({name} *)0)->{field})))"
                        ),
                    };
                    writeln!(
                        out,
                        "_Static_assert({here} == {expect}, \"{name}.{field}: a member before it is missing or misplaced\");"
                    )
                    .unwrap();
                    prev = Some(field.clone());
                    last = field;
                }
                writeln!(
                    out,
                    "_Static_assert(sizeof({name}) == ALIGN_UP(offsetof({name}, {last}) + sizeof((({name} *)0)->{last}), _Alignof({name})), \"{name}: members after {last} are missing\");"
                )
                .unwrap();
                counts[2] += 1;
            }
            Item::Const(c) => {
                let name = c.ident.to_string();
                let value = expr(&c.expr);
                writeln!(
                    out,
                    "_Static_assert(({name}) == ({value}), \"constant {name} is not {value}\");"
                )
                .unwrap();
                counts[3] += 1;
            }
            Item::Use(_) => {}
            // Functions, impls, tests of features.rs: not declarations.
            Item::Fn(_) | Item::Impl(_) | Item::Mod(_) => {}
            other => panic!("{what}: unexpected item {}", quote_tokens(other)),
        }
    }
}

/// Everything from `decl.rs` and the constants of `features.rs`.
fn c_check(decl: &str, features: &str) -> (String, [usize; 4]) {
    let mut out = String::from(
        "#include <stddef.h>\n#include <stdint.h>\n#include <sys/types.h>\n\
         #include <rados/librados.h>\n#include <rbd/librbd.h>\n#include <rbd/features.h>\n\
         #define ALIGN_UP(x, a) (((x) + (a) - 1) / (a) * (a))\n",
    );
    let mut counts = [0; 4];
    assertions(decl, "decl.rs", &mut out, &mut counts);
    // Only the constants of features.rs (its struct is not a C type).
    let feat = syn::parse_file(features).expect("features.rs parses");
    let consts: String = feat
        .items
        .iter()
        .filter(|i| matches!(i, Item::Const(c) if c.ident.to_string().starts_with("RBD_FEATURE_")))
        .map(|i| quote_tokens(i) + "\n")
        .collect();
    assertions(&consts, "features.rs", &mut out, &mut counts);
    (out, counts)
}

fn compile(c: &str, name: &str) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("bw-rbd-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file: PathBuf = dir.join(format!("{name}.c"));
    std::fs::write(&file, c).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=gnu11", "-fsyntax-only", "-Wall", "-Werror"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc}: {e}"));
    if std::env::var_os("BW_RBD_KEEP_C").is_none() {
        let _ = std::fs::remove_file(&file);
    }
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn declarations_match_the_headers() {
    if !headers_present() {
        return;
    }
    let (c, counts) = c_check(&source("src/sys/decl.rs"), &source("src/features.rs"));
    if let Err(e) = compile(&c, "ok") {
        panic!("the declarations disagree with the headers:\n{e}\n--- generated C ---\n{c}");
    }
    // Everything the crate calls was seen (a parse that silently found
    // nothing would pass the compiler).
    let [fns, types, structs, consts] = counts;
    assert!(fns >= 24, "only {fns} functions checked");
    assert_eq!((types, structs), (5, 1), "typedefs, structs");
    assert!(consts >= 16, "only {consts} constants checked");
}

#[test]
fn a_wrong_declaration_is_caught() {
    if !headers_present() {
        return;
    }
    let decl = source("src/sys/decl.rs");
    let features = source("src/features.rs");
    let cases = [
        // a const pointer declared mutable
        (
            "buf: *const c_char,\n        c: rbd_completion_t,\n    ) -> c_int;\n    pub fn rbd_aio_discard",
            "buf: *mut c_char,\n        c: rbd_completion_t,\n    ) -> c_int;\n    pub fn rbd_aio_discard",
            "rbd_aio_write",
        ),
        // a wrong return type
        (
            "pub fn rbd_aio_get_return_value(c: rbd_completion_t) -> isize;",
            "pub fn rbd_aio_get_return_value(c: rbd_completion_t) -> c_int;",
            "rbd_aio_get_return_value",
        ),
        // a wrong struct member
        (
            "pub order: c_int,",
            "pub order: u64,",
            "rbd_image_info_t.order",
        ),
        // a missing struct member
        ("    pub num_objs: u64,\n", "", "rbd_image_info_t"),
        // a wrong constant
        (
            "RBD_FLAG_FAST_DIFF_INVALID: u64 = 1 << 1;",
            "RBD_FLAG_FAST_DIFF_INVALID: u64 = 1 << 2;",
            "RBD_FLAG_FAST_DIFF_INVALID",
        ),
        // a wrong callback typedef
        (
            "fn(cb: rbd_completion_t, arg: *mut c_void)>;",
            "fn(cb: rbd_completion_t, arg: *const c_void)>;",
            "rbd_callback_t",
        ),
    ];
    for (i, (from, to, expect)) in cases.iter().enumerate() {
        assert!(
            decl.contains(from),
            "case {i}: pattern not found in decl.rs: {from}"
        );
        let bad = decl.replacen(from, to, 1);
        let (c, _) = c_check(&bad, &features);
        match compile(&c, &format!("bad{i}")) {
            Ok(()) => panic!("case {i}: corrupting {expect} was not detected"),
            Err(e) => assert!(
                e.contains(expect),
                "case {i}: error does not name {expect}:\n{e}"
            ),
        }
    }
    // A wrong feature bit.
    let bad = features.replacen(
        "RBD_FEATURE_FAST_DIFF: u64 = 1 << 4",
        "RBD_FEATURE_FAST_DIFF: u64 = 1 << 5",
        1,
    );
    let (c, _) = c_check(&decl, &bad);
    let e = compile(&c, "badfeat").expect_err("a wrong feature bit was not detected");
    assert!(e.contains("RBD_FEATURE_FAST_DIFF"), "{e}");
}
