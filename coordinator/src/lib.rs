//! The Argus coordinator. Its node, store and APIs arrive with issues 3 and later;
//! for now the crate only reserves its place in the workspace layout of DESIGN §4.
