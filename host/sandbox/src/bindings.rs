//! The `warden:action` world (`wit/`), as Rust types and traits. The
//! capabilities implement its imports; the runtime calls its exports.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "action",
    imports: { default: async | trappable },
    exports: { default: async },
});
