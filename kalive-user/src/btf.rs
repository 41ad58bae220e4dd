//! Kernel structure layouts from the running kernel's BTF.
//!
//! Rust BPF programs have no CO-RE relocations, so every offset the programs use is
//! looked up here at start-up and handed to them in [`Layout`].

use std::{cell::RefCell, collections::HashMap, os::fd::AsRawFd as _, path::Path};

use nix::sys::memfd::MFdFlags;

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Backend, Btf, Type};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The kernel's type information.
pub struct KernelBtf {
    btf: Btf,
    /// Structures looked up so far, by name: each lookup by name reads
    /// through the whole string section (tens of thousands of types), and
    /// the layout asks for the same dozen structures over eighty times.
    structs: RefCell<HashMap<String, Type>>,
}

/// Where a member sits inside its outermost structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Byte offset from the start of the outermost structure.
    pub offset: u32,
    /// Size in bytes of the member's type.
    pub size: usize,
}

/// `path`'s contents copied into an anonymous file, mapped.
fn mapped_copy(path: &Path) -> Result<Btf, btf_rs::Error> {
    let copy = nix::sys::memfd::memfd_create(c"kalive-btf", MFdFlags::MFD_CLOEXEC)
        .map_err(std::io::Error::from)?;
    std::io::copy(
        &mut std::fs::File::open(path)?,
        &mut std::fs::File::from(copy.try_clone()?),
    )?;
    Btf::from_file_with_backend(format!("/proc/self/fd/{}", copy.as_raw_fd()), Backend::Mmap)
}

impl KernelBtf {
    /// Opens `/sys/kernel/btf/vmlinux` (or another BTF file).
    ///
    /// # Errors
    /// When the file is missing or is not BTF.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!(
                "{} not found: this kernel was built without BTF (CONFIG_DEBUG_INFO_BTF=y is required)",
                path.display()
            );
        }
        // Mapping the file is cheapest: types are read as they are looked
        // up. Kernels before 6.14 cannot map it: then a copy in memory is
        // mapped (parsing it all, as btf-rs does from bytes, took over a
        // second of kalive's start in the 6.1 VM).
        let btf = Btf::from_file_with_backend(path, Backend::Mmap)
            .or_else(|_| mapped_copy(path))
            .or_else(|_| Btf::from_bytes(&std::fs::read(path)?))
            .with_context(|| format!("reading BTF from {}", path.display()))?;
        Ok(Self {
            btf,
            structs: RefCell::default(),
        })
    }

    /// The layout of `member_path` (dot separated, anonymous structs and unions
    /// are searched through) inside `struct struct_name`.
    ///
    /// # Errors
    /// When the structure or a member does not exist, or a member is a bitfield.
    pub fn field(&self, struct_name: &str, member_path: &str) -> Result<Field> {
        let mut ty = self.named_struct(struct_name)?;
        let mut offset_bits = 0u32;
        let mut size = 0;
        for name in member_path.split('.') {
            let (Type::Struct(st) | Type::Union(st)) = &ty else {
                bail!("{struct_name}.{member_path}: {name} is not inside a struct or union");
            };
            let (bits, member_ty) = self
                .find_member(st, name)?
                .ok_or_else(|| anyhow!("struct {struct_name} has no member {member_path}"))?;
            offset_bits += bits;
            ty = self.strip(member_ty)?;
            size = self.size_of(&ty)?;
        }
        if !offset_bits.is_multiple_of(8) {
            bail!("{struct_name}.{member_path} is a bitfield");
        }
        Ok(Field {
            offset: offset_bits / 8,
            size,
        })
    }

    /// Like [`Self::field`], and checks the member is `size` bytes: the programs
    /// read it as a fixed-size integer.
    ///
    /// # Errors
    /// As [`Self::field`], or when the size differs.
    pub fn offset(&self, struct_name: &str, member_path: &str, size: usize) -> Result<u32> {
        let field = self.field(struct_name, member_path)?;
        if field.size != size {
            bail!(
                "{struct_name}.{member_path} is {} bytes on this kernel, kalive reads {size}",
                field.size
            );
        }
        Ok(field.offset)
    }

    /// The bit offset of `member`, a one-bit bitfield of `struct struct_name`
    /// (searched through anonymous members).
    ///
    /// # Errors
    /// When the structure or the member does not exist, or is not one bit.
    pub fn bit_offset(&self, struct_name: &str, member: &str) -> Result<u32> {
        let Type::Struct(st) = self.named_struct(struct_name)? else {
            bail!("{struct_name} is not a struct");
        };
        match self.find_bits(&st, member)? {
            Some((bits, 1)) => Ok(bits),
            Some(_) => bail!("{struct_name}.{member} is not a one-bit field"),
            None => bail!("struct {struct_name} has no member {member}"),
        }
    }

    /// Like [`Self::find_member`] for a bitfield: its bit offset and width.
    fn find_bits(&self, st: &btf_rs::Struct, name: &str) -> Result<Option<(u32, u32)>> {
        for member in &st.members {
            let member_name = self.btf.resolve_name(member).unwrap_or_default();
            if member_name == name {
                return Ok(member
                    .bitfield_size()
                    .map(|bits| (member.bit_offset(), bits)));
            }
            if member_name.is_empty()
                && let Type::Struct(inner) | Type::Union(inner) =
                    self.strip(self.btf.resolve_chained_type(member)?)?
                && let Some((bits, width)) = self.find_bits(&inner, name)?
            {
                return Ok(Some((member.bit_offset() + bits, width)));
            }
        }
        Ok(None)
    }

    /// Whether `struct struct_name` has `member_path`.
    #[must_use]
    pub fn has_field(&self, struct_name: &str, member_path: &str) -> bool {
        self.field(struct_name, member_path).is_ok()
    }

    /// The value of enumerator `name` in `enum enum_name`.
    ///
    /// # Errors
    /// When the enum or the enumerator does not exist.
    pub fn enum_value(&self, enum_name: &str, name: &str) -> Result<u32> {
        for ty in self.btf.resolve_types_by_name(enum_name)? {
            if let Type::Enum(e) = ty {
                for member in &e.members {
                    if self.btf.resolve_name(member)? == name {
                        return Ok(member.val());
                    }
                }
            }
        }
        bail!("enum {enum_name} has no {name} in the kernel's BTF")
    }

    /// The size of `struct name`, bytes.
    ///
    /// # Errors
    /// When there is no such structure, or its size is over 4 GiB.
    pub fn struct_size(&self, name: &str) -> Result<u32> {
        let ty = self.named_struct(name)?;
        u32::try_from(self.size_of(&ty)?).with_context(|| format!("the size of struct {name}"))
    }

    /// Whether `name` is a function the kernel's BTF describes (which fentry
    /// needs).
    #[must_use]
    pub fn has_func(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .is_ok_and(|types| types.iter().any(|t| matches!(t, Type::Func(_))))
    }

    fn named_struct(&self, name: &str) -> Result<Type> {
        if let Some(ty) = self.structs.borrow().get(name) {
            return Ok(ty.clone());
        }
        let ty = self
            .btf
            .resolve_types_by_name(name)
            .with_context(|| format!("looking up struct {name} in BTF"))?
            .into_iter()
            .find(|ty| matches!(ty, Type::Struct(_)))
            .ok_or_else(|| anyhow!("struct {name} not found in the kernel's BTF"))?;
        self.structs
            .borrow_mut()
            .insert(name.to_owned(), ty.clone());
        Ok(ty)
    }

    /// Finds `name` among the members of `st`, descending into anonymous members.
    /// Returns the bit offset relative to `st` and the member's type.
    fn find_member(&self, st: &btf_rs::Struct, name: &str) -> Result<Option<(u32, Type)>> {
        for member in &st.members {
            let member_name = self.btf.resolve_name(member).unwrap_or_default();
            let member_ty = self.btf.resolve_chained_type(member)?;
            if member_name == name {
                if member.bitfield_size().is_some_and(|bits| bits != 0) {
                    bail!("member {name} is a bitfield");
                }
                return Ok(Some((member.bit_offset(), member_ty)));
            }
            if member_name.is_empty()
                && let Type::Struct(inner) | Type::Union(inner) = self.strip(member_ty)?
                && let Some((bits, ty)) = self.find_member(&inner, name)?
            {
                return Ok(Some((member.bit_offset() + bits, ty)));
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut ty: Type) -> Result<Type> {
        loop {
            ty = match &ty {
                Type::Typedef(t) => self.btf.resolve_chained_type(t)?,
                Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => {
                    self.btf.resolve_chained_type(t)?
                }
                Type::TypeTag(t) => self.btf.resolve_chained_type(t)?,
                _ => return Ok(ty),
            };
        }
    }

    fn size_of(&self, ty: &Type) -> Result<usize> {
        Ok(match ty {
            Type::Int(t) => t.size(),
            Type::Ptr(_) => size_of::<usize>(),
            Type::Struct(t) | Type::Union(t) => t.size(),
            Type::Enum(t) => t.size(),
            Type::Enum64(t) => t.size(),
            Type::Array(a) => {
                let elem = self.strip(self.btf.resolve_chained_type(a)?)?;
                a.len() * self.size_of(&elem)?
            }
            other => bail!("cannot size BTF type {}", other.name()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> KernelBtf {
        KernelBtf::open(Path::new(VMLINUX)).expect("the test kernel has BTF")
    }

    /// Kernels before 6.14 cannot map their BTF: a copy is mapped instead,
    /// and reads the same (and the same as parsing it whole).
    #[test]
    fn a_mapped_copy_reads_as_the_file() {
        let copy = KernelBtf {
            btf: mapped_copy(Path::new(VMLINUX)).expect("a mapped copy"),
            structs: RefCell::default(),
        };
        let parsed = KernelBtf {
            btf: Btf::from_bytes(&std::fs::read(VMLINUX).expect("read")).expect("parsed"),
            structs: RefCell::default(),
        };
        let btf = kernel();
        for (st, member) in [
            ("tcp_sock", "keepalive_time"),
            ("sock", "__sk_common.skc_daddr"),
            ("net", "ipv4.sysctl_tcp_keepalive_time"),
        ] {
            let want = btf.field(st, member).expect("the file");
            assert_eq!(copy.field(st, member).expect("the copy"), want);
            assert_eq!(parsed.field(st, member).expect("parsed"), want);
        }
        assert_eq!(
            copy.struct_size("tcp_sock").expect("size"),
            btf.struct_size("tcp_sock").expect("size")
        );
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = kernel();
        // skc_daddr sits in an anonymous struct inside an anonymous union of
        // sock_common, right after the 8-byte skc_addrpair it aliases.
        let pair = btf
            .field("sock_common", "skc_addrpair")
            .expect("skc_addrpair");
        let daddr = btf.field("sock_common", "skc_daddr").expect("skc_daddr");
        let saddr = btf
            .field("sock_common", "skc_rcv_saddr")
            .expect("skc_rcv_saddr");
        assert_eq!(daddr.offset, pair.offset);
        assert_eq!(saddr.offset, pair.offset + 4);
        assert_eq!(daddr.size, 4);
        // sock embeds sock_common at offset 0.
        assert_eq!(
            btf.field("sock", "__sk_common.skc_daddr")
                .expect("nested")
                .offset,
            daddr.offset
        );
    }

    #[test]
    fn missing_btf_says_what_is_needed() {
        let err = KernelBtf::open(Path::new("/nonexistent/vmlinux"))
            .err()
            .expect("no file");
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }

    #[test]
    fn reports_missing_members_and_wrong_sizes() {
        let btf = kernel();
        let err = btf
            .field("sock", "no_such_member")
            .expect_err("missing member");
        assert!(err.to_string().contains("no_such_member"), "{err}");
        let err = btf
            .offset("sock", "sk_protocol", 4)
            .expect_err("wrong size");
        assert!(err.to_string().contains("2 bytes"), "{err}");
        assert!(btf.field("no_such_struct_kalive", "x").is_err());
    }
}
