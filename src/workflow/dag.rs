//! A workflow's graph: nodes named in the spec's `dag` section, edges from each node to the
//! nodes it feeds, validated as TorchServe validates it (one start node, no cycle).

use std::collections::HashMap;

/// Why a `dag` section is refused; the messages are TorchServe's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    #[error("Self loop exception")]
    SelfLoop,
    /// An edge named twice (TorchServe's check, despite its name, catches only that; real
    /// cycles fail the start-node or order checks).
    #[error("loop exception")]
    Loop,
    #[error("DAG should have only one start node")]
    StartNodes,
    #[error("Not a valid DAG")]
    Cycle,
}

/// Nodes by index, in the order the spec first names them.
#[derive(Debug, Clone, Default)]
pub struct Dag {
    names: Vec<String>,
    index: HashMap<String, usize>,
    children: Vec<Vec<usize>>,
    parents: Vec<Vec<usize>>,
}

impl Dag {
    /// Builds the graph from `node: [targets]` entries (blank targets are skipped) and checks
    /// it.
    pub fn build(entries: &[(String, Vec<String>)]) -> Result<Self, DagError> {
        let mut dag = Dag::default();
        for (from, targets) in entries {
            let f = dag.add(from);
            for to in targets.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
                let t = dag.add(to);
                if f == t {
                    return Err(DagError::SelfLoop);
                }
                if dag.children[f].contains(&t) {
                    return Err(DagError::Loop);
                }
                dag.children[f].push(t);
                dag.parents[t].push(f);
            }
        }
        let starts = (0..dag.len())
            .filter(|&i| dag.parents[i].is_empty())
            .count();
        if starts != 1 {
            return Err(DagError::StartNodes);
        }
        if dag.topological().len() != dag.len() {
            return Err(DagError::Cycle);
        }
        Ok(dag)
    }

    fn add(&mut self, name: &str) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.names.len();
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), i);
        self.children.push(Vec::new());
        self.parents.push(Vec::new());
        i
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, node: usize) -> &str {
        &self.names[node]
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The one node without parents (checked by `build`).
    pub fn start(&self) -> usize {
        (0..self.len())
            .find(|&i| self.parents[i].is_empty())
            .unwrap_or(0)
    }

    pub fn children(&self, node: usize) -> &[usize] {
        &self.children[node]
    }

    pub fn parents(&self, node: usize) -> &[usize] {
        &self.parents[node]
    }

    /// Kahn's order; shorter than the graph when it has a cycle.
    pub fn topological(&self) -> Vec<usize> {
        let mut waiting: Vec<usize> = self.parents.iter().map(Vec::len).collect();
        let mut ready: Vec<usize> = (0..self.len()).filter(|&i| waiting[i] == 0).collect();
        let mut order = Vec::with_capacity(self.len());
        while let Some(n) = ready.pop() {
            order.push(n);
            for &c in &self.children[n] {
                waiting[c] -= 1;
                if waiting[c] == 0 {
                    ready.push(c);
                }
            }
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(entries: &[(&str, &[&str])]) -> Result<Dag, DagError> {
        let entries: Vec<(String, Vec<String>)> = entries
            .iter()
            .map(|(f, t)| (f.to_string(), t.iter().map(|s| s.to_string()).collect()))
            .collect();
        Dag::build(&entries)
    }

    #[test]
    fn sequential_and_parallel_graphs() {
        let d = dag(&[("pre", &["m1"]), ("m1", &["m2"]), ("m2", &["post"])]).unwrap();
        let order: Vec<&str> = d.topological().iter().map(|&i| d.name(i)).collect();
        assert_eq!(order, ["pre", "m1", "m2", "post"]);
        assert_eq!(d.name(d.start()), "pre");

        let d = dag(&[("pre", &["a", "b", " "]), ("a", &["agg"]), ("b", &["agg"])]).unwrap();
        let agg = d.names().iter().position(|n| n == "agg").unwrap();
        let parents: Vec<&str> = d.parents(agg).iter().map(|&i| d.name(i)).collect();
        assert_eq!(parents, ["a", "b"]);
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn torchserve_refusals() {
        assert_eq!(dag(&[("a", &["a"])]).unwrap_err(), DagError::SelfLoop);
        assert_eq!(dag(&[("a", &["b", "b"])]).unwrap_err(), DagError::Loop);
        assert_eq!(
            dag(&[("a", &["b"]), ("b", &["a"])]).unwrap_err(),
            DagError::StartNodes
        );
        assert_eq!(
            dag(&[("a", &["c"]), ("b", &["c"])]).unwrap_err(),
            DagError::StartNodes
        );
        assert_eq!(
            dag(&[("s", &["a"]), ("a", &["b"]), ("b", &["c"]), ("c", &["a"])]).unwrap_err(),
            DagError::Cycle
        );
        assert_eq!(dag(&[]).unwrap_err(), DagError::StartNodes);
    }
}
