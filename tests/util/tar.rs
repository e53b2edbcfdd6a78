//! Hand-written tar archives, so that nothing depends on a tar library's idea of what is
//! allowed, and an independent reader of ckpt's archives (Python's tarfile).

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use serde::Deserialize;

use super::describe;

pub const BLOCK: usize = 512;
/// Fixed mtime of every member (2023-11-14).
pub const MTIME: u64 = 1_700_000_000;

/// Writes `value` as zero-padded octal filling `field` but its last byte (a NUL).
pub fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let digits = format!("{value:0width$o}");
    assert_eq!(digits.len(), width, "{value} does not fit {width} octal digits");
    field[..width].copy_from_slice(digits.as_bytes());
    field[width] = 0;
}

/// Writes `value` as a GNU base-256 number (high bit of the first byte set).
pub fn base256(field: &mut [u8], value: u64) {
    field.fill(0);
    let n = field.len();
    field[n - 8..].copy_from_slice(&value.to_be_bytes());
    field[0] |= 0x80;
}

pub fn set_checksum(block: &mut [u8; BLOCK]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
}

/// A ustar header owned by root, mode 0755 for directories and 0644 otherwise, mtime
/// [`MTIME`], checksum set. `name` and `link` are cut to their 100-byte fields.
pub fn header(name: &[u8], typeflag: u8, size: u64, link: &[u8]) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    let n = name.len().min(100);
    b[..n].copy_from_slice(&name[..n]);
    octal(&mut b[100..108], if typeflag == b'5' { 0o755 } else { 0o644 });
    octal(&mut b[108..116], 0);
    octal(&mut b[116..124], 0);
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], MTIME);
    b[156] = typeflag;
    let l = link.len().min(100);
    b[157..157 + l].copy_from_slice(&link[..l]);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    b[265..269].copy_from_slice(b"root");
    b[297..301].copy_from_slice(b"root");
    octal(&mut b[329..337], 0);
    octal(&mut b[337..345], 0);
    set_checksum(&mut b);
    b
}

/// One pax record, its length prefix counting its own digits.
pub fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len += 1;
    }
    let out = [format!("{len} ").as_bytes(), key, b"=", value, b"\n"].concat();
    assert_eq!(out.len(), len);
    out
}

/// An archive built block by block.
#[derive(Default)]
pub struct Tar {
    out: Vec<u8>,
}

impl Tar {
    pub fn new() -> Tar {
        Tar::default()
    }

    /// An archive that starts with `bytes` (e.g. another archive without its end blocks).
    pub fn from_bytes(bytes: Vec<u8>) -> Tar {
        Tar { out: bytes }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn block(&mut self, block: [u8; BLOCK]) -> &mut Tar {
        self.out.extend_from_slice(&block);
        self
    }

    /// Appends data padded to a block boundary.
    pub fn data(&mut self, data: &[u8]) -> &mut Tar {
        self.out.extend_from_slice(data);
        self.out.resize(self.out.len().div_ceil(BLOCK) * BLOCK, 0);
        self
    }

    pub fn raw(&mut self, bytes: &[u8]) -> &mut Tar {
        self.out.extend_from_slice(bytes);
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Tar {
        self.block(header(name.as_bytes(), b'0', data.len() as u64, b"")).data(data)
    }

    pub fn dir(&mut self, name: &str) -> &mut Tar {
        self.block(header(name.as_bytes(), b'5', 0, b""))
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Tar {
        self.block(header(name.as_bytes(), b'2', 0, target.as_bytes()))
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Tar {
        self.block(header(name.as_bytes(), b'1', 0, target.as_bytes()))
    }

    pub fn node(&mut self, name: &str, typeflag: u8, major: u64, minor: u64) -> &mut Tar {
        let mut b = header(name.as_bytes(), typeflag, 0, b"");
        octal(&mut b[329..337], major);
        octal(&mut b[337..345], minor);
        set_checksum(&mut b);
        self.block(b)
    }

    /// An extended header (`x` local, `g` global) holding exactly `data`.
    pub fn extended(&mut self, typeflag: u8, data: &[u8]) -> &mut Tar {
        self.block(header(b"PaxHeaders/evil", typeflag, data.len() as u64, b"")).data(data)
    }

    /// A pax extended header ('x') holding exactly `data`.
    pub fn pax_raw(&mut self, data: &[u8]) -> &mut Tar {
        self.extended(b'x', data)
    }

    pub fn pax(&mut self, records: &[(&[u8], &[u8])]) -> &mut Tar {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        self.pax_raw(&data)
    }

    /// A GNU long name ('L') or long link target ('K') for the next member.
    pub fn gnu_long(&mut self, typeflag: u8, value: &[u8]) -> &mut Tar {
        let mut data = value.to_vec();
        data.push(0);
        self.block(header(b"././@LongLink", typeflag, data.len() as u64, b"")).data(&data)
    }

    pub fn end(&mut self) -> &mut Tar {
        self.raw(&[0u8; 2 * BLOCK])
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.out.clone()
    }
}

/// `python3 tests/interop/readtar.py ARGS`: Python's tarfile reading archives (see the
/// script's head for its modes).
pub fn readtar_py(args: &[&OsStr]) -> Command {
    let mut c = Command::new("python3");
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/readtar.py")).args(args);
    c
}

/// One member as Python's tarfile reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct PyMember {
    /// Without a directory's trailing '/' ("./" is ".").
    pub name: String,
    /// Offset of the member's data in the (outer) archive.
    pub offset: u64,
    pub size: u64,
    /// The typeflag: "0" file, "1" hardlink, "2" symlink, "3" char, "4" block, "5" dir,
    /// "6" fifo.
    #[serde(rename = "type")]
    pub ty: String,
    pub linkname: String,
    /// Sorted keys of its pax records (tarfile hides the pax headers themselves).
    pub pax: Vec<String>,
}

/// An archive as Python's tarfile reads it (`readtar.py members`).
#[derive(Debug, Deserialize)]
pub struct PyListing {
    pub members: Vec<PyMember>,
    /// The members of the archive nested as the member asked for, if there is one.
    pub nested: Option<Vec<PyMember>>,
    /// The data of the member asked for as text, if there is one.
    pub text: Option<String>,
}

/// Reads `archive` with Python's tarfile (independent of ckpt and the tar crate), also the
/// archive held by its member `nested` and the text of its member `text`.
pub fn python_members(archive: &Path, nested: Option<&str>, text: Option<&str>) -> PyListing {
    let mut args: Vec<&OsStr> = vec!["members".as_ref()];
    for (flag, member) in [("--nested", nested), ("--text", text)] {
        if let Some(member) = member {
            args.extend([OsStr::new(flag), member.as_ref()]);
        }
    }
    args.push(archive.as_os_str());
    let mut cmd = readtar_py(&args);
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{cmd:?}: bad JSON ({e}): {stdout}"))
}

/// Per member of `archive` in order, as Python's tarfile reads it: (name, offset of the
/// member's data in the archive, size, tar type char). See [`PyMember`].
pub fn python_data_offsets(archive: &Path) -> Vec<(String, u64, u64, char)> {
    python_members(archive, None, None)
        .members
        .into_iter()
        .map(|m| {
            let ty = m.ty.chars().next().unwrap_or_else(|| panic!("{}: empty type", m.name));
            (m.name, m.offset, m.size, ty)
        })
        .collect()
}

/// A member of an archive as its blocks hold it: the pax records of its extended header, the
/// name in its ustar header (prefix included), and its stored data, read by
/// [`raw_members`] without interpreting anything (a sparse member's data is its map and
/// fragments).
#[derive(Debug, Clone)]
pub struct RawMember {
    pub pax: Vec<(String, Vec<u8>)>,
    pub ustar_name: Vec<u8>,
    pub data: Vec<u8>,
}

impl RawMember {
    /// The member's name as a reader that knows pax sparse sees it.
    pub fn name(&self) -> &[u8] {
        let record = |key: &str| self.pax.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_slice());
        record("GNU.sparse.name").or_else(|| record("path")).unwrap_or(&self.ustar_name)
    }

    /// Its `GNU.sparse.*` records, in archive order.
    pub fn sparse_records(&self) -> Vec<(String, Vec<u8>)> {
        self.pax.iter().filter(|(k, _)| k.starts_with("GNU.sparse.")).cloned().collect()
    }
}

/// The members of a plain (uncompressed) archive, pax extended headers joined to the member
/// they describe; global headers skipped.
pub fn raw_members(archive: &[u8]) -> Vec<RawMember> {
    let field = |block: &[u8], range: std::ops::Range<usize>| -> Vec<u8> {
        block[range].iter().copied().take_while(|&b| b != 0).collect()
    };
    let mut members = Vec::new();
    let mut pax = Vec::new();
    let mut at = 0;
    while at + BLOCK <= archive.len() && archive[at..at + BLOCK].iter().any(|&b| b != 0) {
        let block = &archive[at..at + BLOCK];
        let size_field = String::from_utf8(field(block, 124..136)).unwrap();
        let size = u64::from_str_radix(size_field.trim(), 8).unwrap() as usize;
        let data = archive[at + BLOCK..at + BLOCK + size].to_vec();
        match block[156] {
            b'x' => pax = parse_pax_records(&data),
            b'g' => {}
            _ => {
                let (prefix, name) = (field(block, 345..500), field(block, 0..100));
                let ustar_name = if prefix.is_empty() { name } else { [prefix, name].join(&b'/') };
                members.push(RawMember { pax: std::mem::take(&mut pax), ustar_name, data });
            }
        }
        at += BLOCK + size.div_ceil(BLOCK) * BLOCK;
    }
    members
}

/// Pax records `LEN KEY=VALUE\n`, in order.
fn parse_pax_records(mut data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut records = Vec::new();
    while let Some(space) = data.iter().position(|&b| b == b' ') {
        let len: usize = std::str::from_utf8(&data[..space]).unwrap().parse().unwrap();
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').unwrap();
        records.push((String::from_utf8(record[..eq].to_vec()).unwrap(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    records
}
