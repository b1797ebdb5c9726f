use wasmparser::component_types::{ComponentAnyTypeId, ComponentEntityType, ComponentItem};
use wasmparser::types::Types;
use wasmparser::{Encoding, Parser, Payload, Validator, WasmFeatures};

use crate::ALL;

/// What a host needs to know about a component, rendered for comparison.
#[derive(Debug, Default, PartialEq)]
struct Shape {
    component: bool,
    /// `name: kind`, where a kind of `type` or `types-only instance` needs no definition from the host.
    imports: Vec<String>,
    exports: Vec<String>,
    /// The core module's name section and DWARF line tables, for symbolized traps.
    custom_sections: Vec<String>,
}

fn shape(bytes: &[u8]) -> Result<Shape, wasmparser::BinaryReaderError> {
    let types = Validator::new_with_features(WasmFeatures::all()).validate_all(bytes)?;
    let mut shape = Shape::default();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::Version { encoding, .. } => {
                if depth == 0 {
                    shape.component = encoding == Encoding::Component;
                }
                depth += 1;
            }
            Payload::End(_) => depth -= 1,
            Payload::ComponentImportSection(imports) if depth == 1 => {
                for import in imports {
                    let name = import?.name.name;
                    let kind = match types.component_item_for_import(name) {
                        Some(item) => import_kind(&types, item),
                        None => "unknown",
                    };
                    shape.imports.push(format!("{name}: {kind}"));
                }
            }
            Payload::ComponentExportSection(exports) if depth == 1 => {
                for export in exports {
                    shape.exports.push(export?.name.name.to_string());
                }
            }
            Payload::CustomSection(section)
                if matches!(section.name(), "name" | ".debug_line")
                    && !shape.custom_sections.iter().any(|name| name == section.name()) =>
            {
                shape.custom_sections.push(section.name().to_string());
            }
            _ => {}
        }
    }
    shape.custom_sections.sort();
    Ok(shape)
}

/// Types that are not resources are structural: a host satisfies them, and an instance made only of them, without defining anything.
fn import_kind(types: &Types, item: &ComponentItem) -> &'static str {
    let is_plain_type = |ty: &ComponentEntityType| matches!(ty, ComponentEntityType::Type { created, .. } if !matches!(created, ComponentAnyTypeId::Resource(_)));
    match item.ty {
        ty if is_plain_type(&ty) => "type",
        ComponentEntityType::Instance(id) if types[id].exports.values().all(|export| is_plain_type(&export.ty)) => {
            "types-only instance"
        }
        ComponentEntityType::Instance(_) => "instance",
        ComponentEntityType::Func(_) => "func",
        ComponentEntityType::Type { .. } => "resource",
        ComponentEntityType::Module(_) => "module",
        ComponentEntityType::Component(_) => "component",
        ComponentEntityType::Value(_) => "value",
    }
}

/// The world imports nothing; its `use types.{...}` makes wit-component import the types of `molt:policy/types`, which carry no functions or resources.
#[test]
fn every_artifact_is_a_valid_component_that_needs_nothing_from_the_host() {
    let expected = Shape {
        component: true,
        imports: [
            "molt:policy/types@0.1.0: types-only instance",
            "reading: type",
            "action: type",
            "policy-error: type",
            "config: type",
        ]
        .map(String::from)
        .to_vec(),
        exports: ["init", "process", "snapshot", "restore"].map(String::from).to_vec(),
        custom_sections: [".debug_line", "name"].map(String::from).to_vec(),
    };
    for (name, bytes) in ALL {
        match shape(bytes) {
            Ok(shape) => assert_eq!(shape, expected, "{name}"),
            Err(error) => panic!("{name}: not a valid component: {error}"),
        }
    }
}

#[test]
fn all_lists_every_guest_once() {
    let names: Vec<&str> = ALL.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            "threshold",
            "moving-average",
            "deadband",
            "sequence-echo",
            "chaos",
            "threshold-c"
        ]
    );
}
