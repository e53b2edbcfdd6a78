//! The directories an import has seen, as a tree of names: the chain of open directories
//! names its levels by node, the deferred directory metadata waits in the nodes, and the
//! flags say which directories this import created (a layer's deletion makes those opaque
//! instead of whiting them out) and which were searched for stale temporary names. Separate
//! because path resolution, metadata and layer deletions all read it, and none owns it.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::hash::BuildHasher;

use crate::tar::meta::Meta;

const NO_NODE: u32 = u32::MAX;
/// The archive listed the directory: its metadata is applied at the end.
pub(crate) const HAS_META: u8 = 1;
/// The import created the directory.
pub(crate) const CREATED: u8 = 2;
/// Stale temporary names were looked for in the directory.
pub(crate) const SCANNED: u8 = 4;

/// A directory's deferred metadata (owner and time fit the kernel's 32-bit IDs).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DirMeta {
    mtime: i64,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_nsec: u32,
}

impl DirMeta {
    pub(crate) fn from_meta(meta: &Meta) -> DirMeta {
        DirMeta {
            mtime: meta.mtime,
            mode: meta.mode,
            uid: meta.uid as u32,
            gid: meta.gid as u32,
            mtime_nsec: meta.mtime_nsec,
        }
    }

    pub(crate) fn meta(self) -> Meta {
        Meta {
            mode: self.mode,
            uid: u64::from(self.uid),
            gid: u64::from(self.gid),
            mtime: self.mtime,
            mtime_nsec: self.mtime_nsec,
            dev_major: 0,
            dev_minor: 0,
        }
    }
}

/// One directory the import entered: its parent's index and its own name (not its path).
pub(crate) struct DirNode {
    parent: u32,
    /// The next node whose (parent, name) has the same hash.
    next_same_hash: u32,
    name_start: usize,
    name_len: u32,
    pub(crate) flags: u8,
    pub(crate) meta: DirMeta,
}

/// Every directory the import entered, created or was given metadata for, as a tree of
/// names: about 100 bytes per directory plus its name, whatever the length of its path.
/// Node 0 is the destination itself; a parent always comes before its children.
pub(crate) struct DirTree {
    nodes: Vec<DirNode>,
    names: Vec<u8>,
    /// A hash of (parent, name) to the newest node with that hash.
    index: HashMap<u64, u32>,
    hasher: std::collections::hash_map::RandomState,
}

impl DirTree {
    pub(crate) fn new() -> DirTree {
        let root = DirNode {
            parent: NO_NODE,
            next_same_hash: NO_NODE,
            name_start: 0,
            name_len: 0,
            flags: 0,
            meta: DirMeta::default(),
        };
        DirTree { nodes: vec![root], names: Vec::new(), index: HashMap::new(), hasher: Default::default() }
    }

    pub(crate) fn node(&self, node: u32) -> &DirNode {
        &self.nodes[node as usize]
    }

    pub(crate) fn node_mut(&mut self, node: u32) -> &mut DirNode {
        &mut self.nodes[node as usize]
    }

    pub(crate) fn name(&self, node: u32) -> &[u8] {
        let n = self.node(node);
        &self.names[n.name_start..n.name_start + n.name_len as usize]
    }

    pub(crate) fn find(&self, parent: u32, name: &[u8]) -> Option<u32> {
        let mut node = *self.index.get(&self.hasher.hash_one((parent, name)))?;
        while node != NO_NODE {
            if self.node(node).parent == parent && self.name(node) == name {
                return Some(node);
            }
            node = self.node(node).next_same_hash;
        }
        None
    }

    /// The node of `name` in `parent`, added if new.
    pub(crate) fn child(&mut self, parent: u32, name: &[u8], flags: u8) -> u32 {
        if let Some(node) = self.find(parent, name) {
            self.node_mut(node).flags |= flags;
            return node;
        }
        let node = self.nodes.len() as u32;
        let hash = self.hasher.hash_one((parent, name));
        let next_same_hash = self.index.insert(hash, node).unwrap_or(NO_NODE);
        self.nodes.push(DirNode {
            parent,
            next_same_hash,
            name_start: self.names.len(),
            name_len: name.len() as u32,
            flags,
            meta: DirMeta::default(),
        });
        self.names.extend_from_slice(name);
        node
    }

    /// The names from below the destination down to `node`.
    pub(crate) fn path_names(&self, mut node: u32) -> Vec<Vec<u8>> {
        let mut names = Vec::new();
        while node != 0 {
            names.push(self.name(node).to_vec());
            node = self.node(node).parent;
        }
        names.reverse();
        names
    }

    /// The nodes with metadata to apply, deepest first (in archive order at one depth).
    pub(crate) fn deferred(&self) -> Vec<u32> {
        let mut depth = vec![0u32; self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate().skip(1) {
            depth[i] = depth[node.parent as usize] + 1;
        }
        let mut order: Vec<u32> =
            (0..self.nodes.len() as u32).filter(|&node| self.node(node).flags & HAS_META != 0).collect();
        order.sort_by_key(|&node| Reverse(depth[node as usize]));
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_directories_come_deepest_first() {
        let mut tree = DirTree::new();
        let b = tree.child(0, b"a", 0);
        let ab = tree.child(b, b"b", 0);
        tree.node_mut(ab).flags |= HAS_META;
        tree.node_mut(b).flags |= HAS_META;
        assert_eq!(tree.child(0, b"a", HAS_META), b);
        assert_eq!(tree.deferred(), vec![ab, b]);
        assert_eq!(tree.path_names(ab), vec![b"a".to_vec(), b"b".to_vec()]);
    }
}
