/** The Node-free model: domain types, activity contract, names and every default. */
export * from './domain';
export * from './batching';
export * from './stages';
export * from './activities';
export * from './names';
export * from './profiles';
export * as DEFAULTS from './defaults';
