//! Gives a plugin's core module local traps in place of the WASI functions it
//! imports but never needs, then makes the component.
//!
//! Why: Rust's standard library for `wasm32-wasip2` imports ~19 WASI functions
//! (stdio, environment, exit, terminals) that a plugin only reaches on paths
//! that would fail anyway (printing, exiting). The host links each as a trap,
//! but every instantiation still lowers and wires each import: ~1.5 µs of a
//! ~11 µs fresh-instance call in the profile (BENCHMARKS.md). Defined inside
//! the module as `unreachable`, they cost nothing per instance and behave the
//! same: calling one traps. `wasi:random` stays an import: std seeds hash maps
//! from it and the host answers it.

use wasm_encoder::reencode::{self, Reencode};
use wasm_encoder::{CodeSection, Function, FunctionSection, ImportSection, Instruction, NameMap, NameSection};
use wasmparser::{Name, Parser, Payload, TypeRef};

/// Whether an import module is one the plugin gets a local trap for.
fn stubbed(module: &str) -> bool {
    module.starts_with("wasi:") && !module.starts_with("wasi:random/")
}

/// Function-index arithmetic: stubbed imports become functions after the
/// module's own, every other function shifts down past them.
struct Stubber {
    /// New index of each imported function, by old index.
    imported: Vec<u32>,
    /// Type index of each stub, in order.
    stub_types: Vec<u32>,
}

impl Stubber {
    fn new(core: &[u8]) -> Result<Stubber, String> {
        let mut kept = Vec::new();
        let mut defined = 0u32;
        for payload in Parser::new(0).parse_all(core) {
            match payload.map_err(|e| e.to_string())? {
                Payload::ImportSection(section) => {
                    for import in section.into_imports() {
                        let import = import.map_err(|e| e.to_string())?;
                        if let TypeRef::Func(ty) = import.ty {
                            kept.push((stubbed(import.module), ty));
                        }
                    }
                }
                Payload::FunctionSection(section) => defined = section.count(),
                _ => {}
            }
        }
        let kept_count = kept.iter().filter(|(stub, _)| !stub).count() as u32;
        let mut imported = Vec::new();
        let mut stub_types = Vec::new();
        let mut next_kept = 0;
        for (stub, ty) in kept {
            if stub {
                imported.push(kept_count + defined + stub_types.len() as u32);
                stub_types.push(ty);
            } else {
                imported.push(next_kept);
                next_kept += 1;
            }
        }
        Ok(Stubber { imported, stub_types })
    }

    fn removed(&self) -> u32 {
        self.stub_types.len() as u32
    }
}

impl Reencode for Stubber {
    type Error = std::convert::Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(match self.imported.get(func as usize) {
            Some(&new) => new,
            None => func - self.removed(),
        })
    }

    fn parse_import_section(
        &mut self,
        imports: &mut ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        for import in section.into_imports() {
            let import = import?;
            if matches!(import.ty, TypeRef::Func(_)) && stubbed(import.module) {
                continue;
            }
            self.parse_import(imports, import)?;
        }
        Ok(())
    }

    fn parse_function_section(
        &mut self,
        functions: &mut FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_function_section(self, functions, section)?;
        for &ty in &self.stub_types {
            functions.function(ty);
        }
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_code_section(self, code, section)?;
        for _ in &self.stub_types {
            let mut trap = Function::new([]);
            trap.instruction(&Instruction::Unreachable);
            trap.instruction(&Instruction::End);
            code.function(&trap);
        }
        Ok(())
    }

    fn parse_custom_name_subsection(
        &mut self,
        names: &mut NameSection,
        section: Name<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        // Function names must stay in index order, and the stubs moved to the end.
        let Name::Function(map) = section else {
            return reencode::utils::parse_custom_name_subsection(self, names, section);
        };
        let mut entries = Vec::new();
        for naming in map {
            let naming = naming?;
            entries.push((self.function_index(naming.index)?, naming.name));
        }
        entries.sort_by_key(|(index, _)| *index);
        let mut out = NameMap::new();
        for (index, name) in entries {
            out.append(index, name);
        }
        names.functions(&out);
        Ok(())
    }
}

/// The component for `core` (a module linked with `--skip-wit-component`),
/// its unused WASI imports replaced by local traps. Returns the component and
/// how many imports were replaced.
pub fn componentize(core: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let mut stubber = Stubber::new(core)?;
    let count = stubber.stub_types.len();
    let mut module = wasm_encoder::Module::new();
    stubber
        .parse_core_module(&mut module, Parser::new(0), core)
        .map_err(|e| format!("rewriting the core module: {e}"))?;
    let rewritten = module.finish();
    wasmparser::Validator::new()
        .validate_all(&rewritten)
        .map_err(|e| format!("the rewritten core module is invalid: {e}"))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&rewritten)
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| format!("making the component: {e:#}"))?;
    Ok((component, count))
}
