//! `cargo xtask lint`'s cycle check: no import cycles between modules.
//!
//! Each crate root (`src/lib.rs`, `src/main.rs`) is parsed with `syn`, its
//! module tree followed through `mod` items (files and inline blocks), and
//! every path a module names — `use` trees, paths in types and expressions,
//! and `a::b` paths inside macro invocations — resolved to the module that
//! defines it: `crate::`, `super::`, `self::`, child modules and names bound
//! by `use` (re-exports are followed to where the item lives).
//!
//! Each reference from module `S` to module `T` becomes one edge in the
//! graph of the directory where their paths part: `config` → `daemon` at the
//! top level, `dag::scheduler` → `dag::state` inside `dag/`. A parent's own
//! file (`dag.rs`, `lib.rs`) is not a node of its directory's graph: it is
//! the facade that declares and re-exports its children. Test code
//! (`#[cfg(test)]` modules and items) is left out: a unit test may import
//! what it likes. Any strongly connected component is reported as one cycle,
//! `config -> daemon -> oci -> config`, with a `file:line` for every edge.
//!
//! Paths that name nothing in the crate (std, dependencies, locals) are
//! ignored; a single-segment path in code that names a module (a local
//! variable that shares a module's name) is ignored too.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use proc_macro2::{Spacing, TokenStream, TokenTree};
use syn::visit::Visit;

/// A module's path from its crate root; empty for the root.
type ModPath = Vec<String>;

/// One place a module names a path.
#[derive(Debug, Clone)]
struct Reference {
    /// The path as written (`crate`, `super`, `self` or a name first).
    segments: Vec<String>,
    /// Where: file and line.
    file: PathBuf,
    line: usize,
    /// A `use` item (single segments count) or a path in code.
    is_use: bool,
}

/// What one module declares and names.
#[derive(Debug, Default)]
struct Module {
    /// Child modules (test modules excluded).
    children: BTreeSet<String>,
    /// Items defined here (types, functions, traits, constants, macros …).
    items: BTreeSet<String>,
    /// Names bound by module-level `use`: name → path as written.
    bindings: BTreeMap<String, Vec<String>>,
    /// Module-level glob imports, as written.
    globs: Vec<Vec<String>>,
    /// Every path this module's (non-test) code names.
    references: Vec<Reference>,
}

/// One crate's module tree.
#[derive(Debug, Default)]
pub struct Crate {
    /// Shown in messages, e.g. `runtime/src/lib.rs`.
    name: String,
    modules: BTreeMap<ModPath, Module>,
}

/// One directory's graph: from → to → the first reference that makes it.
type Graph = BTreeMap<String, BTreeMap<String, Evidence>>;

/// An edge `from -> to` with the first reference that makes it.
#[derive(Debug, Clone)]
struct Evidence {
    file: PathBuf,
    line: usize,
    path: String,
}

/// A cycle found in one directory's graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// The crate root it was found in.
    pub krate: String,
    /// Nodes in order; the first is repeated at the end.
    pub nodes: Vec<String>,
    /// One line per edge: `a -> b: file:line path`.
    pub evidence: Vec<String>,
    /// Every node of the strongly connected component the cycle is in
    /// (more than `nodes` when cycles overlap).
    pub component: Vec<String>,
}

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {}", self.krate, self.nodes.join(" -> "))?;
        for e in &self.evidence {
            writeln!(f, "    {e}")?;
        }
        if self.component.len() + 1 > self.nodes.len() {
            writeln!(
                f,
                "    (one of the cycles tying these {} modules together: {})",
                self.component.len(),
                self.component.join(", ")
            )?;
        }
        Ok(())
    }
}

impl Crate {
    /// Parse the crate whose root file is `root`, reading files with `read`
    /// (the file system, or a map in tests).
    pub fn parse(
        name: &str,
        root: &Path,
        read: &dyn Fn(&Path) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let mut krate = Self {
            name: name.to_owned(),
            modules: BTreeMap::new(),
        };
        let dir = root.parent().unwrap_or(Path::new("")).to_path_buf();
        krate.parse_file(Vec::new(), root, dir, read)?;
        Ok(krate)
    }

    /// Parse `file` as module `path`; its `mod x;` children live in `dir`.
    fn parse_file(
        &mut self,
        path: ModPath,
        file: &Path,
        dir: PathBuf,
        read: &dyn Fn(&Path) -> Option<String>,
    ) -> anyhow::Result<()> {
        let text = read(file).with_context(|| format!("reading {}", file.display()))?;
        let ast = syn::parse_file(&text).with_context(|| format!("parsing {}", file.display()))?;
        self.parse_items(path, file, dir, &ast.items, read)
    }

    fn parse_items(
        &mut self,
        path: ModPath,
        file: &Path,
        dir: PathBuf,
        items: &[syn::Item],
        read: &dyn Fn(&Path) -> Option<String>,
    ) -> anyhow::Result<()> {
        let mut module = Module::default();
        let mut children = Vec::new();
        for item in items {
            if is_test(item_attrs(item)) {
                continue;
            }
            match item {
                syn::Item::Mod(m) => {
                    module.children.insert(m.ident.to_string());
                    children.push(m);
                }
                syn::Item::Use(u) => {
                    let mut leaves = Vec::new();
                    use_leaves(&u.tree, &mut Vec::new(), &mut leaves);
                    let line = u.use_token.span.start().line;
                    for leaf in leaves {
                        match &leaf {
                            UseLeaf::Name { binding, path } => {
                                if !binding.is_empty() {
                                    module.bindings.insert(binding.clone(), path.clone());
                                }
                            }
                            UseLeaf::Glob(path) => module.globs.push(path.clone()),
                        }
                        // A re-export (`pub use`) names nothing for this
                        // module's own code; what uses it is followed to the
                        // item. A private `use` is this module's dependency.
                        if matches!(u.vis, syn::Visibility::Inherited) {
                            module.references.push(Reference {
                                segments: leaf.path().clone(),
                                file: file.to_path_buf(),
                                line,
                                is_use: true,
                            });
                        }
                    }
                }
                other => {
                    if let Some(name) = item_name(other) {
                        module.items.insert(name);
                    }
                    let mut v = PathCollector {
                        file,
                        out: &mut module.references,
                    };
                    v.visit_item(other);
                }
            }
        }
        self.modules.insert(path.clone(), module);
        for m in children {
            let name = m.ident.to_string();
            let mut child = path.clone();
            child.push(name.clone());
            let explicit = path_attr(&m.attrs);
            match &m.content {
                Some((_, items)) => {
                    let child_dir = match &explicit {
                        Some(p) => dir.join(p),
                        None => dir.join(&name),
                    };
                    self.parse_items(child, file, child_dir, items, read)?;
                }
                None => {
                    let (child_file, child_dir) = match &explicit {
                        Some(p) => {
                            let f = dir.join(p);
                            let d = f.with_extension("");
                            (f, d)
                        }
                        None => {
                            let flat = dir.join(format!("{name}.rs"));
                            if read(&flat).is_some() {
                                (flat, dir.join(&name))
                            } else {
                                (dir.join(&name).join("mod.rs"), dir.join(&name))
                            }
                        }
                    };
                    self.parse_file(child, &child_file, child_dir, read)?;
                }
            }
        }
        Ok(())
    }

    /// The module `segments` (written in module `from`) lands in, or `None`
    /// if it names nothing in this crate.
    fn resolve(&self, from: &[String], segments: &[String], depth: usize) -> Option<ModPath> {
        let (first, rest) = segments.split_first()?;
        if depth > 32 {
            return None;
        }
        let mut cur: ModPath = from.to_vec();
        match first.as_str() {
            "crate" | "$crate" => cur.clear(),
            "self" => {}
            "super" => {
                cur.pop()?;
            }
            name => return self.lookup(from, name, rest, depth),
        }
        self.walk(cur, rest, depth)
    }

    /// `name` looked up in the scope of module `scope`, then `rest` walked.
    fn lookup(
        &self,
        scope: &[String],
        name: &str,
        rest: &[String],
        depth: usize,
    ) -> Option<ModPath> {
        let module = self.modules.get(scope)?;
        if module.children.contains(name) {
            let mut cur = scope.to_vec();
            cur.push(name.to_owned());
            return self.walk(cur, rest, depth);
        }
        if let Some(bound) = module.bindings.get(name) {
            // `use a::b as c;` then `c::d` is `a::b::d`, written in `scope`.
            let full: Vec<String> = bound.iter().chain(rest).cloned().collect();
            return self.resolve(scope, &full, depth + 1);
        }
        if module.items.contains(name) {
            return Some(scope.to_vec());
        }
        for glob in &module.globs {
            let Some(target) = self.resolve(scope, glob, depth + 1) else {
                continue;
            };
            if target.as_slice() == scope {
                continue;
            }
            if self.defines(&target, name) {
                return self.lookup(&target, name, rest, depth + 1);
            }
        }
        None
    }

    /// Whether module `m` has a child, item or binding called `name`.
    fn defines(&self, m: &[String], name: &str) -> bool {
        self.modules.get(m).is_some_and(|m| {
            m.children.contains(name) || m.items.contains(name) || m.bindings.contains_key(name)
        })
    }

    /// From module `cur`, follow `rest` down children and through bindings.
    fn walk(&self, mut cur: ModPath, rest: &[String], depth: usize) -> Option<ModPath> {
        for (i, seg) in rest.iter().enumerate() {
            if seg == "super" {
                cur.pop()?;
                continue;
            }
            if seg == "self" {
                continue;
            }
            let module = self.modules.get(&cur)?;
            if module.children.contains(seg) {
                cur.push(seg.clone());
                continue;
            }
            if module.items.contains(seg) {
                return Some(cur);
            }
            if module.bindings.contains_key(seg) || !module.globs.is_empty() {
                // A re-export: find where it lives.
                if let Some(t) = self.lookup(&cur, seg, &rest[i + 1..], depth + 1) {
                    return Some(t);
                }
            }
            return Some(cur);
        }
        Some(cur)
    }

    /// Each directory's graph: directory → from → to → first evidence.
    fn graphs(&self) -> BTreeMap<ModPath, Graph> {
        let mut graphs: BTreeMap<ModPath, Graph> = BTreeMap::new();
        for (from, module) in &self.modules {
            for r in &module.references {
                let Some(to) = self.resolve(from, &r.segments, 0) else {
                    continue;
                };
                if !r.is_use
                    && r.segments.len() == 1
                    && self.modules.contains_key(&to)
                    && to.last() == r.segments.last()
                {
                    continue; // a local that shares a module's name
                }
                let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
                if common >= from.len() || common >= to.len() {
                    continue; // within one node, or to/from the directory's own file
                }
                let dir = from[..common].to_vec();
                let node = |p: &ModPath| p[..=common].join("::");
                graphs
                    .entry(dir)
                    .or_default()
                    .entry(node(from))
                    .or_default()
                    .entry(node(&to))
                    .or_insert_with(|| Evidence {
                        file: r.file.clone(),
                        line: r.line,
                        path: r.segments.join("::"),
                    });
            }
        }
        graphs
    }

    /// Every edge, one line each: `a -> b: file:line path`.
    pub fn edges(&self) -> Vec<String> {
        let mut out = Vec::new();
        for graph in self.graphs().values() {
            for (from, tos) in graph {
                for (to, e) in tos {
                    out.push(format!(
                        "{}: {from} -> {to}: {}:{} `{}`",
                        self.name,
                        e.file.display(),
                        e.line,
                        e.path
                    ));
                }
            }
        }
        out
    }

    /// Every cycle, one per strongly connected component of each
    /// directory's graph.
    pub fn cycles(&self) -> Vec<Cycle> {
        let mut cycles = Vec::new();
        for graph in self.graphs().values() {
            for component in strongly_connected(graph) {
                if component.len() < 2 {
                    continue;
                }
                let nodes = shortest_cycle(graph, &component);
                let evidence = nodes
                    .windows(2)
                    .filter_map(|w| {
                        let e = graph.get(&w[0])?.get(&w[1])?;
                        Some(format!(
                            "{} -> {}: {}:{} `{}`",
                            w[0],
                            w[1],
                            e.file.display(),
                            e.line,
                            e.path
                        ))
                    })
                    .collect();
                cycles.push(Cycle {
                    krate: self.name.clone(),
                    nodes,
                    evidence,
                    component: component.into_iter().collect(),
                });
            }
        }
        cycles
    }
}

/// Tarjan's algorithm over a small graph; components in discovery order.
fn strongly_connected(graph: &Graph) -> Vec<BTreeSet<String>> {
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(edges) = s.graph.get(v) {
            for w in edges.keys() {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    if lw < s.low[v] {
                        s.low.insert(v, lw);
                    }
                } else if s.on_stack.contains(w) {
                    let iw = s.index[w];
                    if iw < s.low[v] {
                        s.low.insert(v, iw);
                    }
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.insert(w.to_owned());
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// The shortest cycle through the component's first node (by name), as
/// `[a, b, …, a]`.
fn shortest_cycle(graph: &Graph, component: &BTreeSet<String>) -> Vec<String> {
    let Some(start) = component.iter().next() else {
        return Vec::new();
    };
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start.as_str()]);
    while let Some(v) = queue.pop_front() {
        for w in graph.get(v).into_iter().flat_map(BTreeMap::keys) {
            if !component.contains(w) {
                continue;
            }
            if w == start {
                let mut path = vec![start.clone()];
                let mut cur = v;
                while cur != start.as_str() {
                    path.push(cur.to_owned());
                    cur = parent[cur];
                }
                path.push(start.clone());
                path.reverse();
                return path;
            }
            if !parent.contains_key(w.as_str()) {
                parent.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    component.iter().cloned().collect()
}

/// One leaf of a `use` tree.
#[derive(Debug)]
enum UseLeaf {
    /// `a::b::C` (or `a::b::C as D`, or `a::b::{self}`): binds a name.
    Name { binding: String, path: Vec<String> },
    /// `a::b::*`.
    Glob(Vec<String>),
}

impl UseLeaf {
    fn path(&self) -> &Vec<String> {
        match self {
            Self::Name { path, .. } | Self::Glob(path) => path,
        }
    }
}

fn use_leaves(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<UseLeaf>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_leaves(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            if name == "self" {
                if let Some(last) = prefix.last() {
                    out.push(UseLeaf::Name {
                        binding: last.clone(),
                        path: prefix.clone(),
                    });
                }
            } else {
                let mut path = prefix.clone();
                path.push(name.clone());
                out.push(UseLeaf::Name {
                    binding: name,
                    path,
                });
            }
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            let name = r.ident.to_string();
            if name != "self" {
                path.push(name);
            }
            // `use Trait as _;` binds no name (an empty binding) but is
            // still a dependency.
            let mut binding = r.rename.to_string();
            if binding == "_" {
                binding.clear();
            }
            out.push(UseLeaf::Name { binding, path });
        }
        syn::UseTree::Glob(_) => out.push(UseLeaf::Glob(prefix.clone())),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_leaves(t, prefix, out);
            }
        }
    }
}

/// Collects the paths named in one item (types, expressions, patterns,
/// nested `use`, and `a::b` sequences inside macro invocations), skipping
/// test-only code.
struct PathCollector<'a> {
    file: &'a Path,
    out: &'a mut Vec<Reference>,
}

impl PathCollector<'_> {
    fn push(&mut self, segments: Vec<String>, line: usize, is_use: bool) {
        if segments.is_empty() {
            return;
        }
        self.out.push(Reference {
            segments,
            file: self.file.to_path_buf(),
            line,
            is_use,
        });
    }

    /// `ident (:: ident)+` runs in a macro's tokens (multi-segment only).
    fn scan_tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(g) => {
                    self.scan_tokens(g.stream());
                    i += 1;
                }
                TokenTree::Ident(first) => {
                    let mut segments = vec![first.to_string()];
                    // `$crate` arrives as `$` `crate`.
                    if i > 0 && matches!(&tokens[i - 1], TokenTree::Punct(p) if p.as_char() == '$')
                    {
                        segments[0] = format!("${}", segments[0]);
                    }
                    let line = first.span().start().line;
                    let mut j = i + 1;
                    while j + 2 < tokens.len()
                        && is_path_sep(&tokens[j], &tokens[j + 1])
                        && matches!(&tokens[j + 2], TokenTree::Ident(_))
                    {
                        segments.push(tokens[j + 2].to_string());
                        j += 3;
                    }
                    if segments.len() > 1 {
                        self.push(segments, line, false);
                    }
                    i = j;
                }
                TokenTree::Punct(_) | TokenTree::Literal(_) => i += 1,
            }
        }
    }
}

fn is_path_sep(a: &TokenTree, b: &TokenTree) -> bool {
    matches!((a, b), (TokenTree::Punct(a), TokenTree::Punct(b))
        if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':')
}

impl<'ast> Visit<'ast> for PathCollector<'_> {
    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        let line = p
            .segments
            .first()
            .map_or(0, |s| s.ident.span().start().line);
        self.push(segments, line, false);
        syn::visit::visit_path(self, p);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut leaves = Vec::new();
        use_leaves(&u.tree, &mut Vec::new(), &mut leaves);
        let line = u.use_token.span.start().line;
        for leaf in leaves {
            self.push(leaf.path().clone(), line, true);
        }
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.visit_path(&m.path);
        self.scan_tokens(m.tokens.clone());
    }

    fn visit_item_macro(&mut self, m: &'ast syn::ItemMacro) {
        // A `macro_rules!` body names paths where the macro is expanded;
        // `$crate::…` in it still points into this crate.
        self.visit_macro(&m.mac);
    }

    fn visit_item(&mut self, i: &'ast syn::Item) {
        if is_test(item_attrs(i)) {
            return;
        }
        syn::visit::visit_item(self, i);
    }

    fn visit_impl_item(&mut self, i: &'ast syn::ImplItem) {
        let attrs = match i {
            syn::ImplItem::Const(c) => &c.attrs,
            syn::ImplItem::Fn(f) => &f.attrs,
            syn::ImplItem::Type(t) => &t.attrs,
            syn::ImplItem::Macro(m) => &m.attrs,
            _ => return syn::visit::visit_impl_item(self, i),
        };
        if !is_test(attrs) {
            syn::visit::visit_impl_item(self, i);
        }
    }

    fn visit_stmt(&mut self, s: &'ast syn::Stmt) {
        if let syn::Stmt::Local(l) = s
            && is_test(&l.attrs)
        {
            return;
        }
        syn::visit::visit_stmt(self, s);
    }

    fn visit_attribute(&mut self, _: &'ast syn::Attribute) {
        // `#[derive(…)]`, `#[serde(…)]`: names of macros and their options.
    }
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    match item {
        syn::Item::Const(i) => &i.attrs,
        syn::Item::Enum(i) => &i.attrs,
        syn::Item::ExternCrate(i) => &i.attrs,
        syn::Item::Fn(i) => &i.attrs,
        syn::Item::ForeignMod(i) => &i.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Macro(i) => &i.attrs,
        syn::Item::Mod(i) => &i.attrs,
        syn::Item::Static(i) => &i.attrs,
        syn::Item::Struct(i) => &i.attrs,
        syn::Item::Trait(i) => &i.attrs,
        syn::Item::TraitAlias(i) => &i.attrs,
        syn::Item::Type(i) => &i.attrs,
        syn::Item::Union(i) => &i.attrs,
        syn::Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

fn item_name(item: &syn::Item) -> Option<String> {
    let ident = match item {
        syn::Item::Const(i) => &i.ident,
        syn::Item::Enum(i) => &i.ident,
        syn::Item::ExternCrate(i) => i.rename.as_ref().map_or(&i.ident, |(_, r)| r),
        syn::Item::Fn(i) => &i.sig.ident,
        syn::Item::Macro(i) => i.ident.as_ref()?,
        syn::Item::Static(i) => &i.ident,
        syn::Item::Struct(i) => &i.ident,
        syn::Item::Trait(i) => &i.ident,
        syn::Item::TraitAlias(i) => &i.ident,
        syn::Item::Type(i) => &i.ident,
        syn::Item::Union(i) => &i.ident,
        _ => return None,
    };
    Some(ident.to_string())
}

/// `#[cfg(test)]` (also inside `all(…)`): test-only code.
fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta
                .require_list()
                .is_ok_and(|l| l.tokens.clone().into_iter().any(|t| mentions_test(&t)))
    })
}

fn mentions_test(t: &TokenTree) -> bool {
    match t {
        TokenTree::Ident(i) => i == "test",
        TokenTree::Group(g) => g.stream().into_iter().any(|t| mentions_test(&t)),
        _ => false,
    }
}

/// `#[path = "…"]` on a `mod`.
fn path_attr(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| {
        let syn::Meta::NameValue(nv) = &a.meta else {
            return None;
        };
        if !nv.path.is_ident("path") {
            return None;
        }
        match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        }
    })
}

/// The crate roots checked: every `src/lib.rs` and `src/main.rs` of these
/// packages, relative to the workspace root.
pub const PACKAGES: &[&str] = &["runtime", "host-api"];

/// A cycle that exists today and is tolerated until its slice is done.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    /// The crate root, as in [`Cycle::krate`].
    pub krate: &'static str,
    /// Every module of the strongly connected component, sorted.
    pub modules: &'static [&'static str],
    /// Why it is still there and what removes it.
    pub why: &'static str,
}

/// The tolerated cycles. The check fails when one of them changes (a
/// module joins or leaves it) or disappears, so this list only shrinks.
pub const KNOWN: &[Known] = &[];

/// Split `cycles` into failures (new or changed cycles, and known ones that
/// are gone) and notes (known cycles still present).
pub fn judge(cycles: &[Cycle], known: &[Known]) -> (Vec<String>, Vec<String>) {
    let mut failures = Vec::new();
    let mut notes = Vec::new();
    let matches = |c: &Cycle, k: &Known| c.krate == k.krate && c.component == k.modules;
    for c in cycles {
        match known.iter().find(|k| matches(c, k)) {
            Some(k) => notes.push(format!(
                "known cycle {}: {} ({})",
                c.krate,
                c.nodes.join(" -> "),
                k.why
            )),
            None => failures.push(c.to_string()),
        }
    }
    for k in known {
        if !cycles.iter().any(|c| matches(c, k)) {
            failures.push(format!(
                "{}: the known cycle among {} is gone or has changed: update `KNOWN` in \
                 xtask/src/cycles.rs\n",
                k.krate,
                k.modules.join(", ")
            ));
        }
    }
    (failures, notes)
}

/// Check every crate root of [`PACKAGES`] under `root`; fails naming each
/// cycle that is not [`KNOWN`]. `print_edges` also prints every edge.
pub fn check(root: &Path, print_edges: bool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let read = |p: &Path| std::fs::read_to_string(root.join(p)).ok();
    let mut cycles = Vec::new();
    let mut checked = 0;
    for package in PACKAGES {
        for file in ["src/lib.rs", "src/main.rs"] {
            let path = Path::new(package).join(file);
            if !root.join(&path).is_file() {
                continue;
            }
            let name = format!("{package}/{file}");
            let krate = Crate::parse(&name, &path, &read)?;
            checked += krate.modules.len();
            if print_edges {
                for e in krate.edges() {
                    println!("{e}");
                }
            }
            cycles.extend(krate.cycles());
        }
    }
    let (failures, notes) = judge(&cycles, KNOWN);
    for n in &notes {
        eprintln!("» cycles: {n}");
    }
    if !failures.is_empty() {
        let mut msg = format!(
            "{} import cycle(s) between modules (a lower module must not name a higher one: \
             move the type down, or pass it in):\n",
            failures.len()
        );
        for f in &failures {
            msg.push_str(&format!("  {f}"));
        }
        bail!("{}", msg.trim_end());
    }
    eprintln!(
        "» cycles: no new import cycle among {checked} modules of {} ({:.2} s)",
        PACKAGES.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse a crate from `(path, source)` pairs; the root is `src/lib.rs`.
    fn krate(files: &[(&str, &str)]) -> Crate {
        let files: BTreeMap<PathBuf, String> = files
            .iter()
            .map(|(p, s)| (PathBuf::from(p), (*s).to_owned()))
            .collect();
        let read = move |p: &Path| files.get(p).cloned();
        Crate::parse("lib", Path::new("src/lib.rs"), &read).expect("parse")
    }

    fn names(c: &Crate) -> Vec<String> {
        c.cycles().iter().map(|c| c.nodes.join(" -> ")).collect()
    }

    #[test]
    fn a_use_cycle_is_found_and_named() {
        let c = krate(&[
            ("src/lib.rs", "pub mod config; pub mod daemon; pub mod oci;"),
            (
                "src/config.rs",
                "use crate::daemon::DaemonConfig; pub struct Config { d: DaemonConfig }",
            ),
            ("src/daemon.rs", "pub struct DaemonConfig; use crate::oci;"),
            ("src/oci.rs", "pub fn pull(c: &crate::config::Config) {}"),
        ]);
        assert_eq!(names(&c), ["config -> daemon -> oci -> config"]);
        let cycle = &c.cycles()[0];
        assert_eq!(cycle.evidence.len(), 3);
        assert!(
            cycle.evidence[0].starts_with("config -> daemon: src/config.rs:1"),
            "{:?}",
            cycle.evidence
        );
        assert!(
            cycle
                .to_string()
                .starts_with("lib: config -> daemon -> oci -> config")
        );
    }

    #[test]
    fn an_acyclic_graph_passes() {
        let c = krate(&[
            (
                "src/lib.rs",
                "pub mod config; pub mod daemon; pub mod oci; pub use config::Config;",
            ),
            ("src/config.rs", "pub struct Config; pub struct OciConfig;"),
            (
                "src/daemon.rs",
                "use crate::{Config, oci}; fn f(c: &Config) { oci::pull(c) }",
            ),
            (
                "src/oci.rs",
                "use crate::config::OciConfig; pub fn pull(_: &super::Config) {}",
            ),
        ]);
        assert!(names(&c).is_empty(), "{:?}", names(&c));
    }

    #[test]
    fn test_modules_importing_their_parent_do_not_count() {
        let c = krate(&[
            ("src/lib.rs", "mod a; mod b;"),
            (
                "src/a.rs",
                "use crate::b::B; pub struct A; #[cfg(test)] mod tests { use super::*; use crate::b; }",
            ),
            (
                "src/b.rs",
                "pub struct B; #[cfg(test)] mod tests { use crate::a::A; #[test] fn t() {} }\n\
                 #[cfg(test)] fn helper() -> crate::a::A { crate::a::A }",
            ),
        ]);
        assert!(names(&c).is_empty(), "{:?}", names(&c));
    }

    #[test]
    fn submodule_cycles_are_found_inside_their_directory() {
        let c = krate(&[
            ("src/lib.rs", "pub mod dag;"),
            (
                "src/dag.rs",
                "mod scheduler; mod state; pub use state::RunState; pub use scheduler::Scheduler;",
            ),
            (
                "src/dag/scheduler.rs",
                "pub struct Scheduler; fn f(s: &super::RunState) {}",
            ),
            (
                "src/dag/state.rs",
                "pub struct RunState; fn g() { let _ = super::scheduler::Scheduler; }",
            ),
        ]);
        assert_eq!(
            names(&c),
            ["dag::scheduler -> dag::state -> dag::scheduler"]
        );
    }

    #[test]
    fn a_parent_facade_and_its_children_are_not_a_cycle() {
        // dag.rs declares and re-exports; children use items of dag.rs.
        let c = krate(&[
            ("src/lib.rs", "pub mod dag;"),
            (
                "src/dag.rs",
                "mod spec; mod state; pub use spec::Spec; pub struct Id;\n\
                 pub fn run(s: &Spec) -> state::State { state::State }",
            ),
            ("src/dag/spec.rs", "pub struct Spec(super::Id);"),
            (
                "src/dag/state.rs",
                "use super::{Id, Spec}; pub struct State;",
            ),
        ]);
        assert!(names(&c).is_empty(), "{:?}", names(&c));
    }

    #[test]
    fn paths_in_macros_and_nested_files_count() {
        let c = krate(&[
            ("src/lib.rs", "mod a; mod b;"),
            ("src/a.rs", "mod inner; pub struct A;"),
            (
                "src/a/inner.rs",
                "fn f() { println!(\"{}\", crate::b::NAME); }",
            ),
            (
                "src/b.rs",
                "pub const NAME: &str = \"\"; fn g(_: super::a::A) {}",
            ),
        ]);
        assert_eq!(names(&c), ["a -> b -> a"]);
    }

    #[test]
    fn known_cycles_pass_new_and_vanished_ones_fail() {
        let c = krate(&[
            ("src/lib.rs", "mod a; mod b; mod c;"),
            ("src/a.rs", "use crate::b::B; pub struct A;"),
            ("src/b.rs", "pub struct B; fn f(_: crate::a::A) {}"),
            ("src/c.rs", "pub struct C;"),
        ]);
        let cycles = c.cycles();
        let known = |modules: &'static [&'static str]| Known {
            krate: "lib",
            modules,
            why: "because",
        };
        let (failures, notes) = judge(&cycles, &[known(&["a", "b"])]);
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(notes, ["known cycle lib: a -> b -> a (because)"]);
        // A module joining the knot is a change: it fails.
        let (failures, _) = judge(&cycles, &[known(&["a", "b", "c"])]);
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].starts_with("lib: a -> b -> a"));
        assert!(failures[1].contains("is gone or has changed"));
        // Unlisted, it fails naming it.
        let (failures, _) = judge(&cycles, &[]);
        assert_eq!(failures.len(), 1);
    }

    #[test]
    fn the_workspace_has_no_new_cycles() -> anyhow::Result<()> {
        check(&crate::root(), false)
    }
}
