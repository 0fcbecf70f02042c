//! The Model Context Protocol server behind `crwatch mcp`: watched objects as resources, with
//! subscriptions and tools, for AI agents.
