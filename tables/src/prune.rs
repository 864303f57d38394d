//! What a query needs of each table, read from its SQL before anything is loaded: the columns
//! it names (so files are read for those columns only) and the conditions of its `WHERE` that
//! a file's statistics can rule out (so files that cannot match are not opened). Both are
//! conservative: anything not understood reads more, never less, and polars still evaluates
//! the whole query on what was read.

use std::collections::HashSet;

use delta_kernel::expressions::{Expression, Predicate, Scalar};
use schemas::tables::{ColumnType, TableSchema};
use sqlparser::{
    ast::{BinaryOperator, Expr, SetExpr, Statement, TableFactor, Value},
    dialect::GenericDialect,
    parser::Parser,
    tokenizer::{Token, Tokenizer},
};

/// What one query needs of the tables it names.
#[derive(Debug, Default)]
pub struct QueryNeeds {
    /// Every word of the query (lower case): a column is read when its name is among them.
    words: HashSet<String>,
    /// How many times each word occurs (a table named twice, in a subquery or as an alias,
    /// is not pruned).
    counts: std::collections::HashMap<String, usize>,
    /// Whether the query selects `*` or `t.*` somewhere (then every column is read).
    wildcard: bool,
    /// The `WHERE` conjuncts `column op literal`, with the table or alias qualifying the
    /// column (`None` when unqualified), when the query is one `SELECT` over named tables.
    conditions: Vec<(Option<String>, String, BinaryOperator, Value)>,
    /// The tables of the `FROM` clause with their aliases (lower case), same condition.
    from: Vec<(String, Option<String>)>,
}

impl QueryNeeds {
    /// Reads `sql`. SQL that does not parse here still runs (polars reports its errors); it
    /// just prunes nothing.
    pub fn of(sql: &str) -> Self {
        let mut needs = Self::default();
        if let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() {
            let tokens: Vec<&Token> = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))).collect();
            for (i, token) in tokens.iter().enumerate() {
                match token {
                    Token::Word(word) => {
                        let word = word.value.to_ascii_lowercase();
                        // NATURAL joins on every common column, COLUMNS('regex') selects by
                        // pattern: the columns they use are not named.
                        if word == "natural" || word == "columns" {
                            needs.wildcard = true;
                        }
                        *needs.counts.entry(word.clone()).or_default() += 1;
                        needs.words.insert(word);
                    }
                    // `*` right after SELECT, a comma or a dot is a wildcard; after an operand
                    // it multiplies, and inside `count(*)` it names no column.
                    Token::Mul => {
                        let before = i.checked_sub(1).and_then(|j| tokens.get(j));
                        let after_select = matches!(before, Some(Token::Word(w)) if ["select", "distinct", "all"].iter().any(|k| w.value.eq_ignore_ascii_case(k)));
                        if after_select || matches!(before, Some(Token::Comma | Token::Period)) {
                            needs.wildcard = true;
                        }
                    }
                    _ => {}
                }
            }
        } else {
            needs.wildcard = true;
        }
        let Ok(statements) = Parser::parse_sql(&GenericDialect {}, sql) else { return needs };
        let [Statement::Query(query)] = statements.as_slice() else { return needs };
        if query.with.is_some() {
            return needs;
        }
        let SetExpr::Select(select) = query.body.as_ref() else { return needs };
        for relation in select.from.iter().flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation))) {
            let TableFactor::Table { name, alias, .. } = relation else {
                // A subquery or function in FROM: conditions cannot be placed safely.
                needs.from.clear();
                return needs;
            };
            needs.from.push((name.to_string().to_ascii_lowercase(), alias.as_ref().map(|a| a.name.value.to_ascii_lowercase())));
        }
        if let Some(selection) = &select.selection {
            conjuncts(selection, &mut needs.conditions);
        }
        needs
    }

    /// The columns of `table` to read, or `None` for all of them.
    pub fn columns(&self, table: &TableSchema) -> Option<Vec<String>> {
        if self.wildcard {
            return None;
        }
        let mut columns: Vec<String> =
            table.columns.iter().filter(|c| self.words.contains(&c.name.to_ascii_lowercase())).map(|c| c.name.to_owned()).collect();
        if columns.is_empty() {
            // `SELECT count(*) FROM t` names no column but needs the row count.
            columns.push(table.columns[0].name.to_owned());
        }
        Some(columns)
    }

    /// The predicate a file of `table` must be able to satisfy, when the query has one.
    pub fn predicate(&self, table: &TableSchema) -> Option<Predicate> {
        // The table once in FROM, and its name nowhere else (not in a subquery, not as
        // another table's alias): conditions on other occurrences would prune rows they need.
        let mut entries = self.from.iter().filter(|(name, _)| name == table.name);
        let (Some((name, alias)), None) = (entries.next(), entries.next()) else { return None };
        if self.counts.get(table.name).copied() != Some(1) {
            return None;
        }
        // An aliased table is named by its alias only.
        let names = [alias.as_deref().unwrap_or(name.as_str())];
        let single = self.from.len() == 1;
        let parts: Vec<Predicate> = self
            .conditions
            .iter()
            .filter(|(qualifier, ..)| match qualifier {
                Some(q) => names.contains(&q.as_str()),
                None => single,
            })
            .filter_map(|(_, column, op, value)| {
                let spec = table.columns.iter().find(|c| c.name.eq_ignore_ascii_case(column))?;
                let literal = scalar(spec.ty, value)?;
                let column = Expression::column([spec.name]);
                let literal = Expression::literal(literal);
                Some(match op {
                    BinaryOperator::Eq => column.eq(literal),
                    BinaryOperator::Lt => column.lt(literal),
                    BinaryOperator::LtEq => column.le(literal),
                    BinaryOperator::Gt => column.gt(literal),
                    BinaryOperator::GtEq => column.ge(literal),
                    _ => return None,
                })
            })
            .collect();
        (!parts.is_empty()).then(|| Predicate::and_from(parts))
    }
}

/// The `AND`-connected `column op literal` conditions of `expr` (a `BETWEEN` is two).
fn conjuncts(expr: &Expr, out: &mut Vec<(Option<String>, String, BinaryOperator, Value)>) {
    let column = |e: &Expr| match e {
        Expr::Identifier(ident) => Some((None, ident.value.clone())),
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => Some((Some(parts[0].value.to_ascii_lowercase()), parts[1].value.clone())),
        _ => None,
    };
    let literal = |e: &Expr| match e {
        Expr::Value(v) => Some(v.value.clone()),
        _ => None,
    };
    let flipped = |op: &BinaryOperator| match op {
        BinaryOperator::Lt => Some(BinaryOperator::Gt),
        BinaryOperator::LtEq => Some(BinaryOperator::GtEq),
        BinaryOperator::Gt => Some(BinaryOperator::Lt),
        BinaryOperator::GtEq => Some(BinaryOperator::LtEq),
        BinaryOperator::Eq => Some(BinaryOperator::Eq),
        _ => None,
    };
    match expr {
        Expr::Nested(inner) => conjuncts(inner, out),
        Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        Expr::BinaryOp { left, op, right } => {
            if let (Some((q, c)), Some(v), Some(_)) = (column(left), literal(right), flipped(op)) {
                out.push((q, c, op.clone(), v));
            } else if let (Some(v), Some((q, c)), Some(op)) = (literal(left), column(right), flipped(op)) {
                out.push((q, c, op, v));
            }
        }
        Expr::Between { expr, negated: false, low, high } => {
            if let (Some((q, c)), Some(lo), Some(hi)) = (column(expr), literal(low), literal(high)) {
                out.push((q.clone(), c.clone(), BinaryOperator::GtEq, lo));
                out.push((q, c, BinaryOperator::LtEq, hi));
            }
        }
        _ => {}
    }
}

/// A literal as the kernel scalar of a column's Delta type, when it is one.
fn scalar(ty: ColumnType, value: &Value) -> Option<Scalar> {
    let text = match value {
        Value::SingleQuotedString(s) => s.clone(),
        Value::Number(n, _) => n.to_string(),
        _ => return None,
    };
    let is_number = matches!(value, Value::Number(..));
    match ty {
        ColumnType::Utf8 if !is_number => Some(Scalar::String(text)),
        ColumnType::UInt32 | ColumnType::UInt64 | ColumnType::Int64 if is_number => text.parse::<i64>().ok().map(Scalar::Long),
        // Float statistics are exact for the values written; a literal compared to a float
        // column is rounded the way polars rounds it.
        ColumnType::Float32 if is_number => text.parse::<f32>().ok().map(Scalar::Float),
        ColumnType::Float64 if is_number => text.parse::<f64>().ok().map(Scalar::Double),
        ColumnType::Date if !is_number => {
            let date = chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d").ok()?;
            let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
            i32::try_from((date - epoch).num_days()).ok().map(Scalar::Date)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::QueryNeeds;

    #[test]
    fn a_query_reads_the_columns_it_names() {
        let needs = QueryNeeds::of("SELECT scene_id, count(*) AS n FROM captions WHERE score > 0.5 GROUP BY scene_id");
        assert_eq!(needs.columns(&schemas::tables::CAPTIONS), Some(vec!["scene_id".to_owned(), "score".to_owned()]));
        assert_eq!(QueryNeeds::of("SELECT * FROM captions").columns(&schemas::tables::CAPTIONS), None);
        assert_eq!(QueryNeeds::of("SELECT c.* FROM captions c").columns(&schemas::tables::CAPTIONS), None);
        assert_eq!(QueryNeeds::of("SELECT ALL * FROM captions").columns(&schemas::tables::CAPTIONS), None);
        assert_eq!(QueryNeeds::of("SELECT COLUMNS('^.*_id$') FROM captions").columns(&schemas::tables::CAPTIONS), None);
        assert_eq!(QueryNeeds::of("SELECT count(*) FROM tiles NATURAL JOIN scenes").columns(&schemas::tables::TILES), None);
        assert_eq!(
            QueryNeeds::of("SELECT count(*) FROM tiles").columns(&schemas::tables::TILES),
            Some(vec!["request_id".to_owned()]),
            "a count reads one column"
        );
    }

    #[test]
    fn only_conditions_every_row_must_meet_prune() {
        let needs =
            QueryNeeds::of("SELECT * FROM detections WHERE scene_id = 's1' AND date BETWEEN '2026-01-01' AND '2026-01-31' AND score > 0.3");
        let predicate = needs.predicate(&schemas::tables::DETECTIONS).map(|p| p.to_string()).unwrap_or_default();
        for part in ["scene_id", "date", "score"] {
            assert!(predicate.contains(part), "{part} missing from {predicate}");
        }
        // An OR may match rows of any file.
        assert!(QueryNeeds::of("SELECT * FROM detections WHERE scene_id = 's1' OR score > 0.3")
            .predicate(&schemas::tables::DETECTIONS)
            .is_none());
        // A condition on the other side of a join prunes only that side.
        let join = QueryNeeds::of("SELECT * FROM tiles t JOIN captions c USING (tile_id) WHERE c.caption = 'x' AND t.scene_id = 's'");
        let tiles = join.predicate(&schemas::tables::TILES).map(|p| p.to_string()).unwrap_or_default();
        assert!(tiles.contains("scene_id") && !tiles.contains("caption"), "{tiles}");
        // A self-join's aliases have conditions of their own: none prunes the table.
        assert!(QueryNeeds::of(
            "SELECT a.tile_id FROM tiles a JOIN tiles b ON a.tile_id = b.tile_id WHERE a.scene_id = 'x' AND b.scene_id = 'y'"
        )
        .predicate(&schemas::tables::TILES)
        .is_none());
        // The same table in a subquery: its conditions are not the outer query's.
        assert!(QueryNeeds::of(
            "SELECT * FROM tiles WHERE request_id = 'q1' AND scene_id IN (SELECT scene_id FROM tiles WHERE request_id = 'q4')"
        )
        .predicate(&schemas::tables::TILES)
        .is_none());
        // An alias that is another table's name qualifies that alias's table.
        let shadow = QueryNeeds::of("SELECT * FROM tiles AS s JOIN scenes AS tiles ON s.scene_id = tiles.scene_id WHERE tiles.width > 400");
        assert!(shadow.predicate(&schemas::tables::TILES).is_none());
        assert!(shadow.predicate(&schemas::tables::SCENES).map(|p| p.to_string()).unwrap_or_default().contains("width"));
        // Unqualified columns in a join are not placed on either side.
        assert!(QueryNeeds::of("SELECT * FROM tiles JOIN captions USING (tile_id) WHERE scene_id = 's'")
            .predicate(&schemas::tables::TILES)
            .is_none());
    }
}
