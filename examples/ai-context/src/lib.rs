//! The AI-context example: prompt templates and model parameters as custom resources
//! (`ai.crwatch.io/v1alpha1` `PromptTemplate`, `ModelConfig`), delivered to an inference
//! service by `crwatch serve` over delta xDS, hot-swapped without a restart, with templates
//! that do not render NACKed (and reported back as an `Accepted=False` condition).
//!
//! - [`types`]: the resources and their schema validation;
//! - [`template`]: `{{variable}}` templates, checked and rendered;
//! - [`crd`]: the CRDs as YAML (`deploy/ai-context/`);
//! - [`service`]: the inference service (xDS subscriptions, the active configuration, HTTP).

pub mod crd;
pub mod service;
pub mod template;
pub mod types;
