//! Images and layers.
