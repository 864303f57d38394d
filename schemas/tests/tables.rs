//! The table schemas are the one place column names live; these checks keep them coherent.

use schemas::tables::{self, ColumnType};

#[test]
fn every_result_table_carries_the_provenance_columns_and_a_partition_date() {
    for table in tables::ALL {
        let names: Vec<_> = table.columns.iter().map(|c| c.name).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{} has duplicate columns", table.name);
        assert_eq!(table.column("date").map(|c| c.ty), Some(ColumnType::Date), "{}", table.name);
        for key in table.key {
            assert!(table.column(key).is_some(), "{} key column {key} is missing", table.name);
        }
        if let Some(geometry) = table.geometry_column {
            assert_eq!(table.column(geometry).map(|c| c.ty), Some(ColumnType::GeometryWkb));
        }
    }
    for name in ["captions", "classifications", "vqa", "detections"] {
        let table = tables::by_name(name).unwrap();
        for column in ["request_id", "scene_id", "tile_id", "task", "model_version", "produced_at"] {
            assert!(table.column(column).is_some(), "{name} lacks {column}");
        }
    }
    assert_eq!(tables::by_name("detections").unwrap().geometry_column, Some("geometry"));
    assert!(tables::by_name("nope").is_none());
}
