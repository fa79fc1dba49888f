//! A DAG run's graph as SVG, laid out on the server: one column per
//! dependency depth (a node sits one column right of the deepest node it
//! waits for, or of the planner / `for_each` node that spliced it in), in
//! creation order down each column. Creation order keeps the nodes already
//! drawn in place when a planner adds more, so a live page can swap the
//! new drawing in without the old nodes jumping about.

use maud::{Markup, html};

/// One node to draw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphNode {
    /// Full node id.
    pub id: String,
    /// The capsule alias it calls.
    pub capsule: String,
    /// Its status name (`waiting`, `running`, `succeeded`, …).
    pub status: &'static str,
    /// Indexes (into the same slice) of the nodes it waits for.
    pub deps: Vec<usize>,
    /// Index of the node that spliced it in, if any.
    pub parent: Option<usize>,
}

/// Where each node goes: (column, row) per node, and the grid's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// (column, row) of each node, in input order.
    pub cells: Vec<(usize, usize)>,
    /// Columns used.
    pub columns: usize,
    /// The most rows of any column.
    pub rows: usize,
}

/// Node box width, height, and the gaps between columns and rows (px).
const W: usize = 168;
const H: usize = 44;
const GAP_X: usize = 48;
const GAP_Y: usize = 14;
const PAD: usize = 8;

/// Lay out `nodes`. Cost: O(nodes + edges); an index out of range is
/// ignored and a cycle (which a valid run never has) is cut, not followed.
pub fn layout(nodes: &[GraphNode]) -> Layout {
    let n = nodes.len();
    // Depth by an explicit stack (no recursion: plans may nest deeply).
    const UNSEEN: usize = usize::MAX;
    const VISITING: usize = usize::MAX - 1;
    let mut depth = vec![UNSEEN; n];
    let preds = |i: usize| {
        nodes[i]
            .deps
            .iter()
            .copied()
            .chain(nodes[i].parent)
            .filter(move |&p| p < n && p != i)
    };
    for root in 0..n {
        if depth[root] != UNSEEN {
            continue;
        }
        let mut stack = vec![root];
        depth[root] = VISITING;
        while let Some(&i) = stack.last() {
            let next = preds(i).find(|&p| depth[p] == UNSEEN);
            if let Some(p) = next {
                depth[p] = VISITING;
                stack.push(p);
                continue;
            }
            // Every predecessor is placed (or on the stack: a cycle, cut).
            let d = preds(i)
                .filter(|&p| depth[p] < VISITING)
                .map(|p| depth[p] + 1)
                .max()
                .unwrap_or(0);
            depth[i] = d;
            stack.pop();
        }
    }
    let columns = depth.iter().map(|d| d + 1).max().unwrap_or(0);
    let mut filled = vec![0usize; columns];
    let cells: Vec<(usize, usize)> = depth
        .iter()
        .map(|&d| {
            let row = filled[d];
            filled[d] += 1;
            (d, row)
        })
        .collect();
    Layout {
        cells,
        columns,
        rows: filled.into_iter().max().unwrap_or(0),
    }
}

/// The box's top-left corner of a cell.
fn origin((column, row): (usize, usize)) -> (usize, usize) {
    (PAD + column * (W + GAP_X), PAD + row * (H + GAP_Y))
}

/// `s` cut to `max` characters (with an ellipsis).
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// The `<svg>` of `nodes`: each node a `g.node[data-node][data-status]`
/// (its class `status-<status>` colours it), each dependency an arrow, each
/// "spliced in by" link a dashed one. Sized in pixels, so the page can
/// scroll it rather than squeeze it.
pub fn svg(nodes: &[GraphNode], label: &str) -> Markup {
    let layout = layout(nodes);
    let width = PAD * 2 + layout.columns * W + layout.columns.saturating_sub(1) * GAP_X;
    let height = PAD * 2 + layout.rows * H + layout.rows.saturating_sub(1) * GAP_Y;
    let edge = |from: usize, to: usize| {
        let (fx, fy) = origin(layout.cells[from]);
        let (tx, ty) = origin(layout.cells[to]);
        let (x1, y1) = (fx + W, fy + H / 2);
        let (x2, y2) = (tx, ty + H / 2);
        let mid = (x1 + x2) / 2;
        format!("M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}")
    };
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(width.max(1)) height=(height.max(1))
            viewBox={ "0 0 " (width.max(1)) " " (height.max(1)) } role="img" aria-label=(label) {
            defs {
                marker #arrow viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" orient="auto" {
                    path d="M0,0 L8,4 L0,8 z" fill="currentColor" {}
                }
            }
            g.edges fill="none" stroke="currentColor" stroke-opacity="0.5" {
                @for (i, node) in nodes.iter().enumerate() {
                    @if let Some(p) = node.parent.filter(|&p| p < nodes.len() && p != i) {
                        path.edge.spliced d=(edge(p, i)) stroke-dasharray="4 3" data-from=(nodes[p].id) data-to=(node.id) {}
                    }
                    @for &d in node.deps.iter().filter(|&&d| d < nodes.len() && d != i) {
                        path.edge d=(edge(d, i)) marker-end="url(#arrow)" data-from=(nodes[d].id) data-to=(node.id) {}
                    }
                }
            }
            @for (i, node) in nodes.iter().enumerate() {
                @let (x, y) = origin(layout.cells[i]);
                g class={ "node status-" (node.status) } data-node=(node.id) data-status=(node.status)
                    transform={ "translate(" (x) "," (y) ")" } {
                    title { (node.id) " (" (node.capsule) "): " (node.status) }
                    rect width=(W) height=(H) rx="6" stroke="currentColor" stroke-width="2" {}
                    text.node-id x="10" y="18" fill="currentColor" { (clip(&node.id, 22)) }
                    text.node-status x="10" y="35" fill="currentColor" font-size="11" { (node.status) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, deps: &[usize], parent: Option<usize>) -> GraphNode {
        GraphNode {
            id: id.into(),
            capsule: "echo".into(),
            status: "waiting",
            deps: deps.to_vec(),
            parent,
        }
    }

    #[test]
    fn layers_follow_the_deepest_dependency() {
        // a → b → d, a → c → d, e alone; f spliced in by b.
        let nodes = [
            node("a", &[], None),
            node("b", &[0], None),
            node("c", &[0], None),
            node("d", &[1, 2], None),
            node("e", &[], None),
            node("b.f", &[], Some(1)),
        ];
        let l = layout(&nodes);
        assert_eq!(l.cells, [(0, 0), (1, 0), (1, 1), (2, 0), (0, 1), (2, 1)]);
        assert_eq!((l.columns, l.rows), (3, 2));
    }

    #[test]
    fn a_later_dependency_and_a_long_chain_are_placed_without_recursion() {
        // Node 0 waits for node 1 (declared after it).
        let l = layout(&[node("x", &[1], None), node("y", &[], None)]);
        assert_eq!(l.cells, [(1, 0), (0, 0)]);
        let chain: Vec<GraphNode> = (0..20_000usize)
            .map(|i| {
                let deps = if i == 0 { vec![] } else { vec![i - 1] };
                node(&format!("n{i}"), &deps, None)
            })
            .collect();
        let l = layout(&chain);
        assert_eq!(l.columns, 20_000);
        assert_eq!(l.cells[19_999], (19_999, 0));
    }

    #[test]
    fn cycles_and_bad_indexes_are_cut_not_followed() {
        let l = layout(&[node("a", &[1, 7], None), node("b", &[0], Some(1))]);
        assert_eq!(l.cells.len(), 2);
        assert!(l.columns <= 2);
        assert_eq!(layout(&[]).columns, 0);
    }

    #[test]
    fn the_svg_names_each_node_and_escapes_ids() {
        let mut nodes = vec![node("plan", &[], None), node("<b>&\"x", &[0], None)];
        nodes[0].status = "succeeded";
        nodes.push(node("plan.t", &[], Some(0)));
        let s = svg(&nodes, "run r1").into_string();
        assert!(
            s.contains(r#"class="node status-succeeded" data-node="plan" data-status="succeeded""#),
            "{s}"
        );
        assert!(s.contains(r#"data-node="&lt;b&gt;&amp;&quot;x""#), "{s}");
        assert!(!s.contains("<b>&"), "ids are escaped: {s}");
        assert_eq!(s.matches("<g class=\"node ").count(), 3);
        assert_eq!(s.matches("marker-end").count(), 1, "one dependency arrow");
        assert_eq!(s.matches("class=\"edge spliced\"").count(), 1);
        assert!(s.contains(r#"aria-label="run r1""#));
        // Inline SVG is parsed as foreign content: an unclosed `<rect>` or
        // `<path>` would swallow the labels after it (they would not draw).
        assert_eq!(
            s.matches("<rect").count(),
            s.matches("</rect>").count(),
            "{s}"
        );
        assert_eq!(
            s.matches("<path").count(),
            s.matches("</path>").count(),
            "{s}"
        );
        assert_eq!(s.matches("<text").count(), 6, "two labels per node: {s}");
    }
}
