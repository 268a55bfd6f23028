pub mod demo_provider;
