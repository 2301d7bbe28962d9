pub mod api;
pub mod planner;
