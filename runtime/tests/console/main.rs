//! The web console (`/ui/`) against a real `soma daemon`, one module per
//! page set: the core in a real headless Chromium (`browser`), the
//! marketplace and author pages (`market`, `market_scale`), runs (`runs`),
//! costs, operations and the analytics dashboards (`costs`), phone width, labels, keyboard, layout
//! shift and the install button (`manners`), and issue 15's end-to-end acceptance in
//! the browser (`acceptance`). One test binary (docs/ci.md).

mod acceptance;
mod browser;
mod costs;
mod manners;
mod market;
mod market_scale;
mod runs;
