//! rapimage: turns the declarative recipe (image/recipe.toml + recipe.lock) into the
//! rapbox firmware disk image, without loop devices or mounts.
//!
//! The stages are separate modules; [`build`] runs them in order.

pub mod build;
pub mod cache;
pub mod cmd;
pub mod disk;
pub mod kernel;
pub mod lock;
pub mod manifest;
pub mod provision;
pub mod recipe;
pub mod rootfs;
