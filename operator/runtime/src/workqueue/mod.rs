//! workqueue (being written)
