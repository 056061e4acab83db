//! A QAPI schema as Rust data: the types QEMU's `qapi/*.json` files
//! declare, as statics that refer to one another (`BlockdevOptions` has
//! `BlockdevRef` members whose object branch is `BlockdevOptions`).
//!
//! Only what the input visitor and introspection need is kept: names,
//! member order (QEMU reports the first bad member in that order),
//! optionality, the integer width (it decides QEMU's error wording), and
//! features (`unstable`, `deprecated`).

/// The integer types of QAPI. They differ in range and, visibly, in how
/// QEMU words errors about them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int {
    /// `int` / `int64`.
    I64,
    /// `int32`.
    I32,
    /// `uint64`: negative JSON numbers are accepted and wrap, for
    /// backward compatibility, as in QEMU.
    U64,
    /// `uint32`.
    U32,
    /// `uint16`.
    U16,
    /// `size`: a `uint64` in JSON; in key=value form with QEMU's size
    /// suffixes (`64k`, `1.5G`).
    Size,
}

impl Int {
    /// The C type QEMU names in range errors (`expects uint32_t`).
    pub fn c_name(self) -> &'static str {
        match self {
            Int::I64 => "int64_t",
            Int::I32 => "int32_t",
            Int::U64 | Int::Size => "uint64_t",
            Int::U32 => "uint32_t",
            Int::U16 => "uint16_t",
        }
    }

    pub fn unsigned(self) -> bool {
        matches!(self, Int::U64 | Int::U32 | Int::U16 | Int::Size)
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Type {
    Str,
    Int(Int),
    Bool,
    /// JSON `null`; only as a branch of an alternate.
    Null,
    /// QAPI's `number` (a double); only in what commands return.
    Number,
    /// QAPI's `any`: whatever JSON value (introspection's `default`).
    Any,
    Enum(&'static Enum),
    Struct(&'static Struct),
    Union(&'static Union),
    Alternate(&'static Alternate),
    List(&'static Type),
}

impl Type {
    /// The name introspection gives the type (before masking).
    pub fn name(&self) -> String {
        match self {
            Type::Str => "str".into(),
            Type::Int(_) => "int".into(),
            Type::Bool => "bool".into(),
            Type::Null => "null".into(),
            Type::Number => "number".into(),
            Type::Any => "any".into(),
            Type::Enum(e) => e.name.into(),
            Type::Struct(s) => s.name.into(),
            Type::Union(u) => u.name.into(),
            Type::Alternate(a) => a.name.into(),
            Type::List(t) => format!("[{}]", t.name()),
        }
    }
}

#[derive(Debug)]
pub struct Enum {
    pub name: &'static str,
    pub values: &'static [&'static str],
}

/// Whether blockwire does what a member asks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Support {
    Yes,
    /// QEMU has the member and blockwire does not implement it: it is
    /// refused by name ("... is not supported by blockwire"), unless it
    /// is given as this value, which asks for nothing different from
    /// leaving it out. Such members are not shown by introspection.
    Only(Option<Literal>),
}

/// A JSON scalar a [`Support::Only`] member may still take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Literal {
    Bool(bool),
    Int(i64),
}

#[derive(Debug)]
pub struct Member {
    pub name: &'static str,
    pub ty: Type,
    pub optional: bool,
    pub support: Support,
    pub features: &'static [&'static str],
}

impl Member {
    pub const fn req(name: &'static str, ty: Type) -> Self {
        Self {
            name,
            ty,
            optional: false,
            support: Support::Yes,
            features: &[],
        }
    }

    pub const fn opt(name: &'static str, ty: Type) -> Self {
        Self {
            name,
            ty,
            optional: true,
            support: Support::Yes,
            features: &[],
        }
    }

    /// An optional QEMU member blockwire refuses (see [`Support::Only`]).
    pub const fn unsupported(name: &'static str, ty: Type, harmless: Option<Literal>) -> Self {
        Self {
            name,
            ty,
            optional: true,
            support: Support::Only(harmless),
            features: &[],
        }
    }

    pub const fn features(mut self, f: &'static [&'static str]) -> Self {
        self.features = f;
        self
    }
}

#[derive(Debug)]
pub struct Struct {
    pub name: &'static str,
    pub members: &'static [Member],
    pub features: &'static [&'static str],
}

/// A flat union: common members, the first of which is the tag (an enum
/// whose values are the variants' cases), then the members of the
/// variant the tag names.
#[derive(Debug)]
pub struct Union {
    pub name: &'static str,
    /// The tag member's name (`driver`, `type`, `qom-type`).
    pub tag: &'static str,
    /// The name introspection gives the tag's enum (`BlockdevDriver`).
    pub tag_enum: &'static str,
    /// The common members after the tag.
    pub base: &'static [Member],
    pub variants: &'static [Variant],
}

#[derive(Debug)]
pub struct Variant {
    pub case: &'static str,
    pub members: &'static Struct,
}

impl Union {
    pub fn variant(&self, case: &str) -> Option<&'static Variant> {
        self.variants.iter().find(|v| v.case == case)
    }

    pub fn cases(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.variants.iter().map(|v| v.case)
    }
}

/// An alternate: one of several types, chosen by the JSON type of the
/// value (object, string, null, ...).
#[derive(Debug)]
pub struct Alternate {
    pub name: &'static str,
    pub members: &'static [Type],
}
