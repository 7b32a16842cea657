//! Realistic Taiwan GPKI test hierarchies (GRCA-like root, GCA/XCA/MOEACA/HCA/MOICA-like CAs, cards, CRLs).
